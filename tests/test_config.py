"""Every YAML in experiments/ (and tests/e2e.yaml) loads and validates; errors name the file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from pianoray.config import ConfigError, ProtocolConfig, load_config
from pianoray.data.tiers import Tier
from pianoray.settings import PROJECT_ROOT

YAMLS = sorted((PROJECT_ROOT / "experiments").glob("*.yaml")) + sorted((PROJECT_ROOT / "tests").glob("*.yaml"))


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_every_yaml_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, ProtocolConfig)
    assert cfg.enabled_experiments(), f"{path} enables no experiment"


def test_protocol_yaml_has_the_seed_budgets() -> None:
    cfg = load_config(PROJECT_ROOT / "experiments" / "protocol.yaml")
    assert cfg.round1.epochs == 50
    assert cfg.round2.epochs == 200 and cfg.round2.patience == 20
    assert cfg.round2.folds == 4 and cfg.data.k == 4
    assert cfg.optim.batch_size == 16
    assert cfg.round1.tiers == [Tier.T1, Tier.T2]


def test_relative_data_root_is_relative_to_the_yaml(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    y = tmp_path / "sub" / "c.yaml"
    y.write_text("data: {root: ../corpus}\n")
    assert load_config(y).data.root == (tmp_path / "corpus").resolve()


def test_local_storage_is_relative_to_the_yaml_and_s3_is_kept(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("storage: ../runs\n")
    assert load_config(y).storage == str((tmp_path.parent / "runs").resolve())
    y.write_text("storage: s3://bucket/prefix\n")
    assert load_config(y).storage == "s3://bucket/prefix"


def test_extends_merges_deeply(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("round1: {epochs: 9, rungs: [3]}\noptim: {lr: 0.1}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nround1: {gap: 5}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.round1.epochs, cfg.round1.rungs, cfg.round1.gap, cfg.optim.lr) == (9, [3], 5, 0.1)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("round1: {gap: -1}\n", "round1.gap"),
        ("round1: {epochs: 5, rungs: [7]}\n", "round1"),
        ("optim: {lr: fast}\n", "optim.lr"),
        ("data: {labels: twenty}\n", "data.labels"),
        ("round2: {tiers: [T1, T9]}\n", "round2.tiers"),
        ("rounds: 3\n", "rounds"),  # unknown top-level field
        ("experiments: {audio-frozen: {model: {depth: 3}}}\n", "experiments.audio-frozen.model.depth"),
        ("experiments: {nope: {}}\n", "experiments.nope.encoder"),
        ("round1: {fold: 5}\n", "round1.fold"),
    ],
)
def test_errors_name_file_and_field(tmp_path: Path, text: str, expected: str) -> None:
    y = tmp_path / "bad.yaml"
    y.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(y)
    msg = str(e.value)
    assert str(y) in msg and expected in msg, msg


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    y = tmp_path / "x.yaml"
    y.write_text("a: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(y)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


def test_extends_cycle_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_dotted_overrides_nest_and_parse_values():
    from pianoray.config import ConfigError, dotted_overrides

    assert dotted_overrides(["a.b.c=3", "a.d=true", "e=[1, 2]"]) == {"a": {"b": {"c": 3}, "d": True}, "e": [1, 2]}
    with pytest.raises(ConfigError, match="dotted.key=value"):
        dotted_overrides(["no-equals-sign"])


def test_atomic_write_leaves_the_old_file_and_no_temp_file_when_the_write_fails(tmp_path) -> None:
    from pianoray.files import atomic_write

    target = atomic_write(tmp_path / "sub" / "x.json", '{"a": 1}')
    assert target.read_text() == '{"a": 1}' and [p.name for p in target.parent.iterdir()] == ["x.json"]

    def half_then_fail(tmp):
        tmp.write_text('{"a": ')
        raise OSError(28, "No space left on device", str(tmp))

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == '{"a": 1}' and [p.name for p in target.parent.iterdir()] == ["x.json"]
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path / "sub", b"a folder is in the way")
    assert [p.name for p in tmp_path.iterdir()] == ["sub"]
    # a writer that goes by the suffix (numpy) gets a temporary path with the same suffix
    import numpy as np

    atomic_write(tmp_path / "a.npz", lambda tmp: np.savez(tmp, x=np.arange(3)))
    assert np.load(tmp_path / "a.npz")["x"].tolist() == [0, 1, 2] and not list(tmp_path.glob(".*"))


def test_a_bad_value_is_blamed_on_the_file_in_the_extends_chain_that_set_it(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("round1:\n  epochs: -3\n  patience: 2\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nround1:\n  patience: 3\nseed: 7\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "child.yaml")
    assert str(e.value).startswith(f"{tmp_path / 'base.yaml'}: round1.epochs:")
    # the child's own bad value is the child's
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nround1:\n  epochs: 4\n  patience: -1\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "child.yaml")
    assert str(e.value).startswith(f"{tmp_path / 'child.yaml'}: round1.patience:")
