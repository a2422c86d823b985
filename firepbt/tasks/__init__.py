"""The example tasks shipped with firepbt (toys, NQM, Fashion-MNIST, RL, ...)."""

# Short names for the shipped example tasks, so `firepbt run quadratic` works.
BUILTIN = {
    "quadratic": "firepbt.tasks.toys:QuadraticToy",
    "moving": "firepbt.tasks.toys:MovingOptimumToy",
    "plain": "firepbt.tasks.toys:PlainToy",
    "deceptive": "firepbt.tasks.toys:DeceptiveToy",
    "nqm": "firepbt.tasks.nqm:NQM",
    "fmnist": "firepbt.tasks.fmnist:FashionMNISTMLP",
    "fmnist-cnn": "firepbt.tasks.fmnist:FashionMNISTCNN",
    "teacher-student": "firepbt.tasks.teacher_student:TeacherStudent",
    "sleep": "firepbt.tasks.sleep:SleepTask",
    "acrobot": "firepbt.tasks.rl:AcrobotA2C",
    "lunarlander": "firepbt.tasks.rl:LunarLanderA2C",
}
