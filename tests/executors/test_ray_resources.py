"""resources_per_member and --resources: validated before anything starts (no Ray needed).

Every error names the key, the value and the rule it breaks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from firepbt import PBT, run
from firepbt.cli import main
from firepbt.errors import ConfigError
from firepbt.executors.ray import (
    RayExecutor,
    parse_resources,
    ray_options,
    validate_resources,
)


def test_valid_resources_become_ray_actor_options() -> None:
    r = validate_resources({"cpu": 2, "gpu": 0.25, "memory": "2GiB", "accelerator_x": 0.5})
    assert r == {"cpu": 2.0, "gpu": 0.25, "memory": 2.0 * 2**30, "accelerator_x": 0.5}
    assert ray_options(r) == {"num_cpus": 2.0, "num_gpus": 0.25, "memory": 2**31,
                              "resources": {"accelerator_x": 0.5}}
    # One CPU per member unless told otherwise, as in Ray Tune.
    assert ray_options(validate_resources(None)) == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert validate_resources({"memory": 512_000_000})["memory"] == 512_000_000
    assert validate_resources({"memory": "500MB"})["memory"] == 500_000_000


@pytest.mark.parametrize(("resources", "message"), [
    ({"gpu": 1.5}, "resources_per_member['gpu']=1.5: a quantity above 1 must be a whole number"),
    ({"cpu": -1}, "resources_per_member['cpu']=-1: must be >= 0"),
    ({"gpu": "half"}, "resources_per_member['gpu']='half': must be a number"),
    ({"cpu": True}, "resources_per_member['cpu']=True: must be a number"),
    ({"cpu": float("nan")}, "resources_per_member['cpu']=nan: must be a number"),
    ({"gpu": 0.00001}, "resources_per_member['gpu']=1e-05: at most 4 decimals"),
    ({"num_gpus": 1}, "resources_per_member['num_gpus']: write 'gpu' instead"),
    ({"GPU": 1}, "resources_per_member['GPU']: write 'gpu' instead"),
    ({"memory": "2 bananas"}, "resources_per_member['memory']='2 bananas': must be bytes, or a "
     "number with a unit"),
    ({"memory": -5}, "resources_per_member['memory']=-5: must be >= 0"),
    ({"": 1}, "resources_per_member key '': must be a non-empty string"),
    ([("cpu", 1)], "resources_per_member=[('cpu', 1)]: must be a dict"),
])
def test_bad_resources_name_the_key_and_the_rule(resources: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_resources(resources)
    assert message in str(info.value)


def test_cli_syntax() -> None:
    assert parse_resources("cpu=1, gpu=0.25,memory=4GiB,special=2") == {
        "cpu": 1.0, "gpu": 0.25, "memory": "4GiB", "special": 2.0}
    with pytest.raises(ConfigError, match=r"'gpu' is not KEY=VALUE"):
        parse_resources("cpu=1,gpu")
    with pytest.raises(ConfigError, match=r"gpu='lots' must be a number"):
        parse_resources("gpu=lots")
    with pytest.raises(ConfigError, match=r"'cpu' is given twice"):
        parse_resources("cpu=1,cpu=2")


def test_executor_checks_at_construction_without_starting_ray() -> None:
    with pytest.raises(ConfigError, match=r"workers=0: must be an int >= 1"):
        RayExecutor("firepbt.tasks.toys:QuadraticToy", workers=0)
    with pytest.raises(ConfigError, match=r"resources_per_member\['gpu'\]=2.5"):
        RayExecutor("firepbt.tasks.toys:QuadraticToy", resources={"gpu": 2.5})


def test_resources_only_with_the_ray_executor(tmp_path: Path) -> None:
    store = tmp_path / "run.db"
    with pytest.raises(ConfigError, match=r"resources_per_member=\{'gpu': 1\}: only "
                       r"executor='ray' places members by resources"):
        run("firepbt.tasks.toys:QuadraticToy", algorithm=PBT(population=2), steps=20,
            interval=10, store=str(store), resources_per_member={"gpu": 1})
    with pytest.raises(ConfigError, match=r"executor='dask': must be one of process, "
                       r"inprocess, ray"):
        run("firepbt.tasks.toys:QuadraticToy", algorithm=PBT(population=2), steps=20,
            interval=10, store=str(store), executor="dask")
    # Refused before the store file is created.
    assert not store.exists()


def test_cli_refuses_bad_resources_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "run.db"
    code = main(["run", "quadratic", "--executor", "ray", "--resources", "gpu=1.5",
                 "--store", str(store), "-q", "--no-report"])
    assert code != 0
    err = capsys.readouterr().err
    assert "resources_per_member['gpu']=1.5: a quantity above 1 must be a whole number" in err
    assert not store.exists()
