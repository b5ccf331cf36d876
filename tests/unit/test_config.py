"""daemon.config: the shipped file, validation messages, environment overrides, path anchoring."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from daemon.cli import main
from daemon.config import Config, ConfigError, apply_env, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config.yaml"

DEST = {"name": "pacs", "ae_title": "PACS", "host": "10.0.0.5", "port": 104}


def write(tmp_path: Path, data: object, name: str = "radtriage.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


def problems_of(data: object, **kwargs) -> list[str]:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="test.yaml", environ=kwargs.pop("environ", {}), **kwargs)
    assert info.value.source == "test.yaml"
    return info.value.problems


# -- the shipped file ---------------------------------------------------------------------------


def test_shipped_config_equals_embedded_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # both resolve relative paths against the same folder: the repository root
    monkeypatch.chdir(REPO)
    shipped = load_config(SHIPPED, environ={})
    defaults = load_config(None, environ={})
    assert shipped == defaults
    assert shipped.storage.path == REPO / "var" / "storage"
    assert shipped.model.checkpoint == REPO / "models" / "radtriage-demo.pt"
    assert shipped.database.url == f"sqlite:///{REPO / 'var' / 'radtriage.db'}"


def test_shipped_config_documents_every_setting() -> None:
    """The commented config.yaml lists every key of every section (it is the admin's reference)."""
    data = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    assert set(data) == set(Config.model_fields)
    for section, field in Config.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and hasattr(model, "model_fields"):
            assert set(data[section]) == set(model.model_fields), section


def test_changed_value_is_not_equal_to_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    data["node"]["port"] = 11113
    path = write(tmp_path, data)
    monkeypatch.chdir(tmp_path)
    assert load_config(path, environ={}) != load_config(None, environ={})
    assert load_config(path, environ={}).node.port == 11113


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), environ={})
    assert config.node.port == 11112
    assert config.priority.default == "ROUTINE"
    assert config.destinations == []


# -- one line per problem, naming key, value and what is allowed -------------------------------


def test_unknown_top_level_key_suggests_the_close_one() -> None:
    [line] = problems_of({"nod": {"port": 104}})
    assert line.startswith("nod: unknown key")
    assert "did you mean 'node'?" in line
    assert "allowed here:" in line and "storage" in line and "dispatch" in line


def test_unknown_nested_key_suggests_the_close_one() -> None:
    [line] = problems_of({"node": {"prot": 104}})
    assert line.startswith("node.prot: unknown key")
    assert "did you mean 'port'?" in line
    allowed = line.split("allowed here:")[1]
    assert "ae_title" in allowed and "port" in allowed
    assert "storage" not in allowed  # the keys of node, not of the top level


def test_unknown_key_inside_a_list_item_names_the_index() -> None:
    [line] = problems_of({"destinations": [dict(DEST, aetitle="X")]})
    assert line.startswith("destinations.0.aetitle: unknown key")
    assert "did you mean 'ae_title'?" in line


def _allowed(line: str) -> set[str]:
    return {k.strip() for k in line.split("allowed here:")[1].split(",")}


@pytest.mark.parametrize(("dest", "expected"), [
    (dict(DEST, aetitle="X"), {"name", "type", "objects", "ae_title", "host", "port", "tls"}),
    ({"name": "web", "type": "dicomweb", "url": "http://pacs/dicom-web", "usename": "u"},
     {"name", "type", "objects", "url", "username", "password", "headers", "ca_file"}),
    ({"name": "ris", "type": "hl7", "host": "ris", "port": 2575, "mesage": "ORM^O01"},
     {"name", "type", "objects", "host", "port", "message", "receiving_application",
      "receiving_facility"}),
    ({"name": "back", "type": "return_to_sender", "port": 104, "hots": "x"},
     {"name", "type", "objects", "port", "ae_title", "tls"}),
])
def test_unknown_destination_key_lists_only_the_keys_of_its_type(dest: dict, expected: set) -> None:
    """Issue 18: a DICOM destination's hint listed url and username, which it then refused."""
    [line] = problems_of({"destinations": [dest]})
    assert "unknown key" in line and _allowed(line) == expected


def test_unknown_destination_key_suggests_only_a_key_of_its_type() -> None:
    # 'urls' is close to 'url', which a dicom destination does not take: no hint to it
    [line] = problems_of({"destinations": [dict(DEST, urls="http://x")]})
    assert "did you mean" not in line and "url" not in _allowed(line)
    [line] = problems_of({"destinations": [{"name": "w", "type": "dicomweb",
                                            "url": "http://pacs/dicom-web", "usernme": "u"}]})
    assert "did you mean 'username'?" in line


def test_unknown_key_of_a_destination_of_unknown_type_lists_every_key() -> None:
    problems = problems_of({"destinations": [dict(DEST, type="ftp", aetitle="X")]})
    [line] = [p for p in problems if "unknown key" in p]
    assert {"url", "ae_title", "message"} <= _allowed(line)


def test_a_key_of_another_destination_type_names_the_keys_this_type_takes() -> None:
    [line] = problems_of({"destinations": [dict(DEST, url="http://pacs/dicom-web", username="u")]})
    assert "a dicom destination does not take url, username" in line
    assert line.endswith("it takes ae_title, host, port, tls (and name, type, objects)")


def test_unknown_key_without_close_match_has_no_hint() -> None:
    [line] = problems_of({"node": {"zzzzzz": 1}})
    assert "did you mean" not in line
    assert "allowed here:" in line


def test_wrong_type() -> None:
    [line] = problems_of({"node": {"port": "eleven"}})
    assert line.startswith("node.port = 'eleven': ")
    assert "integer" in line


@pytest.mark.parametrize(
    ("data", "key", "value", "allowed"),
    [
        ({"node": {"port": 70000}}, "node.port", "70000", "65535"),
        ({"node": {"port": 0}}, "node.port", "0", "1"),
        ({"model": {"threshold": 1.5}}, "model.threshold", "1.5", "less than 1"),
        ({"model": {"threshold": 0}}, "model.threshold", "0", "greater than 0"),
        ({"completion": {"stable_s": -1}}, "completion.stable_s", "-1", "greater than 0"),
        ({"completion": {"release_grace_s": -0.5}}, "completion.release_grace_s", "-0.5", "0"),
        ({"model": {"device": "tpu"}}, "model.device", "'tpu'", "'cuda'"),
        ({"logging": {"level": "LOUD"}}, "logging.level", "'LOUD'", "'DEBUG'"),
        ({"database": {"url": "mysql://x/y"}}, "database.url", "'mysql://x/y'", "postgresql://"),
        ({"dispatch": {"max_attempts": 0}}, "dispatch.max_attempts", "0", "1"),
    ],
)
def test_out_of_range_values(data: dict, key: str, value: str, allowed: str) -> None:
    [line] = problems_of(data)
    assert line.startswith(f"{key} = {value}: ")
    assert allowed in line.split(": ", 1)[1]


@pytest.mark.parametrize("title", ["A" * 17, "PACS\\1", "", "   "])
def test_bad_ae_title(title: str) -> None:
    [line] = problems_of({"node": {"ae_title": title}})
    assert line.startswith(f"node.ae_title = {title!r}: ")
    assert "16" in line and "backslash" in line


def test_bad_destination_ae_title_names_the_destination() -> None:
    [line] = problems_of({"destinations": [dict(DEST, ae_title="B\\AD")]})
    assert line.startswith("destinations.0.ae_title = 'B\\\\AD': ")


def test_bad_allowed_calling_ae_names_the_value() -> None:
    """A bad entry in a list of AE titles must be named, not just 'list' (module docstring)."""
    [line] = problems_of({"node": {"allowed_calling_aes": ["PACS", "OR\\THANC"]}})
    assert line.startswith("node.allowed_calling_aes")
    assert "OR\\\\THANC" in line or "OR\\THANC" in line, line


def test_ae_title_is_stripped() -> None:
    config = parse_config({"node": {"ae_title": " RADT "}}, environ={})
    assert config.node.ae_title == "RADT"


def test_duplicate_destination_names() -> None:
    other = dict(DEST, ae_title="OTHER", port=105)
    [line] = problems_of({"destinations": [DEST, other, dict(DEST, name="archive")]})
    assert line.startswith("destinations")
    assert "unique" in line and "repeated: pacs" in line
    assert "archive" not in line


@pytest.mark.parametrize(
    "priority",
    [
        # a higher probability gives a lower priority
        {"rules": [{"min_probability": 0.8, "priority": "ELEVATED"},
                   {"min_probability": 0.5, "priority": "HIGH"}]},
        # the same, given in ascending order
        {"rules": [{"min_probability": 0.5, "priority": "HIGH"},
                   {"min_probability": 0.8, "priority": "ROUTINE"}]},
        # the default must be the lowest
        {"rules": [{"min_probability": 0.8, "priority": "ELEVATED"}], "default": "HIGH"},
        # two rules on the same probability
        {"rules": [{"min_probability": 0.5, "priority": "HIGH"},
                   {"min_probability": 0.5, "priority": "HIGH"}]},
    ],
)
def test_non_monotonic_priority_rules(priority: dict) -> None:
    [line] = problems_of({"priority": priority})
    assert line.startswith("priority")
    assert "min_probability" in line


def test_monotonic_rules_in_any_order_are_accepted() -> None:
    config = parse_config({"priority": {"rules": [
        {"min_probability": 0.5, "priority": "ELEVATED"},
        {"min_probability": 0.8, "priority": "HIGH"},
        {"min_probability": 0.3, "priority": "ELEVATED"},
    ]}}, environ={})
    assert len(config.priority.rules) == 3


def test_backoff_max_below_initial() -> None:
    [line] = problems_of({"dispatch": {"backoff_initial_s": 60, "backoff_max_s": 10}})
    assert line.startswith("dispatch")
    assert "backoff_max_s" in line


def test_several_problems_one_line_each() -> None:
    problems = problems_of({"node": {"port": 70000, "ae_title": "A" * 17},
                            "model": {"threshold": 1.5}, "storge": {}})
    assert len(problems) == 4
    assert all("\n" not in p for p in problems)
    keys = sorted(p.split(" ")[0].rstrip(":") for p in problems)
    assert keys == ["model.threshold", "node.ae_title", "node.port", "storge"]


def test_error_string_prefixes_every_line_with_the_source(tmp_path: Path) -> None:
    path = write(tmp_path, {"node": {"port": 70000}, "model": {"threshold": 2}})
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"{path}: ") for line in lines)


def test_invalid_yaml_gives_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "node:\n  port: 11112\n  host: [127.0.0.1\nstorage:\n  min_free_mb: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    [line] = info.value.problems
    assert "not valid YAML" in line
    assert line.startswith("line ")
    assert int(line.split(",")[0].split()[1]) >= 3


def test_tab_indentation_gives_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "node:\n  port: 1\n\thost: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    [line] = info.value.problems
    assert line.startswith("line 3, column 1: not valid YAML")


def test_file_that_is_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, "- node\n- storage\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.problems == ["(top level) = list: must be a mapping of sections"]


@pytest.mark.parametrize("name", ["missing.yaml", "."])
def test_unreadable_path(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    [line] = info.value.problems
    assert line.startswith("cannot read the file: ")
    assert info.value.source == str(path)


def test_file_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("node:\n  host: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.problems


# -- environment overrides ----------------------------------------------------------------------


def test_env_overrides_single_keys(tmp_path: Path) -> None:
    path = write(tmp_path, {"node": {"port": 2000, "ae_title": "FROMFILE"}})
    config = load_config(path, environ={
        "RADTRIAGE_DATABASE__URL": "postgresql://radtriage@db.example/radtriage",
        "RADTRIAGE_NODE__PORT": "11113",
        "RADTRIAGE_MODEL__ALLOW_UNTRAINED": "true",
        "OTHER_NODE__PORT": "1",
    })
    assert config.database.url == "postgresql://radtriage@db.example/radtriage"
    assert config.node.port == 11113 and isinstance(config.node.port, int)
    assert config.node.ae_title == "FROMFILE"  # the rest of the section is kept
    assert config.model.allow_untrained is True


def test_env_config_path_is_not_a_key() -> None:
    config = parse_config({}, environ={"RADTRIAGE_CONFIG": "/etc/radtriage.yaml"})
    assert config.node.port == 11112


def test_bad_env_value_is_reported() -> None:
    [line] = problems_of({}, environ={"RADTRIAGE_NODE__PORT": "notaport"})
    assert line.startswith("node.port (from RADTRIAGE_NODE__PORT) = 'notaport': ")


def test_unknown_env_key_is_reported() -> None:
    [line] = problems_of({}, environ={"RADTRIAGE_NODE__PROT": "11113"})
    assert line.startswith("node.prot (from RADTRIAGE_NODE__PROT): unknown key")
    assert "did you mean 'port'?" in line


def test_environ_argument_replaces_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADTRIAGE_NODE__PORT", "11999")
    assert load_config(None, environ={}).node.port == 11112
    assert load_config(None).node.port == 11999


def test_apply_env_does_not_change_the_callers_dict() -> None:
    data = {"node": {"port": 1, "host": "h"}}
    out = apply_env(data, {"RADTRIAGE_NODE__PORT": "2", "RADTRIAGE_STORAGE__MIN_FREE_MB": "0"})
    assert data == {"node": {"port": 1, "host": "h"}}
    assert out == {"node": {"port": 2, "host": "h"}, "storage": {"min_free_mb": 0}}


# -- relative paths -----------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path / "etc" / "radtriage"
    conf_dir.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = write(conf_dir, {
        "storage": {"path": "data/store"},
        "model": {"checkpoint": "../models/m.pt"},
        "database": {"url": "sqlite:///db/r.db"},
        "logging": {"file": "logs/r.log"},
    })
    monkeypatch.chdir(elsewhere)
    config = load_config(path, environ={})
    base = conf_dir.resolve()
    assert config.storage.path == base / "data" / "store"
    assert config.model.checkpoint == base.parent / "models" / "m.pt"
    assert config.database.url == f"sqlite:///{base / 'db' / 'r.db'}"
    assert config.logging.file == base / "logs" / "r.log"


def test_absolute_paths_and_other_urls_are_kept(tmp_path: Path) -> None:
    abs_store = tmp_path / "abs"
    path = write(tmp_path, {"storage": {"path": str(abs_store)},
                            "database": {"url": f"sqlite:///{tmp_path}/x.db"}}, "a.yaml")
    config = load_config(path, environ={})
    assert config.storage.path == abs_store
    assert config.database.url == f"sqlite:///{tmp_path}/x.db"
    for url in ("sqlite:///:memory:", "postgresql://u@h/db"):
        assert load_config(write(tmp_path, {"database": {"url": url}}, "b.yaml"),
                           environ={}).database.url == url


def test_env_relative_path_resolves_against_the_config_folder(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    path = write(conf_dir, {})
    monkeypatch.chdir(tmp_path)
    config = load_config(path, environ={"RADTRIAGE_STORAGE__PATH": "spool"})
    assert config.storage.path == conf_dir.resolve() / "spool"


# -- radtriage check-config ---------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("RADTRIAGE_"):
            monkeypatch.delenv(name)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_check_config_good(tmp_path: Path, clean_env: None) -> None:
    path = write(tmp_path, {"node": {"port": 11113}, "destinations": [DEST],
                            "model": {"checkpoint": str(REPO / "models" / "radtriage-demo.pt")}})
    code, out, err = run_cli("check-config", str(path))
    assert code == 0
    assert err == ""
    assert out.startswith(f"{path}: OK")
    assert "1 destination(s)" in out and "port 11113" in out and "model radtriage-demo" in out
    assert "not checked here (serve checks them): port 11113 free" in out


def test_check_config_loads_the_model(tmp_path: Path, clean_env: None) -> None:
    """A valid file whose checkpoint is missing: check-config refuses it as serve would (the
    table of such configs, both commands side by side: tests/integration/test_startup_failures.py)."""
    path = write(tmp_path, {"model": {"checkpoint": "absent.pt"}})
    code, out, err = run_cli("check-config", str(path))
    assert (code, out) == (1, "")
    assert err.startswith("radtriage: cannot start: model.checkpoint: ") and "absent.pt" in err


def test_check_config_shipped_file(clean_env: None) -> None:
    code, out, err = run_cli("check-config", str(SHIPPED))
    assert (code, err) == (0, "")
    assert "OK" in out


def test_check_config_bad_one_line_per_problem(tmp_path: Path, clean_env: None) -> None:
    path = write(tmp_path, {"node": {"port": 70000, "prot": 1}, "model": {"threshold": 1.5}})
    code, out, err = run_cli("check-config", str(path))
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"radtriage: invalid configuration: {path}: ") for line in lines)
    text = "\n".join(lines)
    assert "node.port = 70000" in text and "node.prot: unknown key" in text
    assert "model.threshold = 1.5" in text


def test_check_config_bad_env_value(tmp_path: Path, clean_env: None,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, {})
    monkeypatch.setenv("RADTRIAGE_NODE__PORT", "99999")
    code, _, err = run_cli("check-config", str(path))
    assert code == 2
    assert "node.port (from RADTRIAGE_NODE__PORT) = 99999" in err


def test_check_config_missing_file(tmp_path: Path, clean_env: None) -> None:
    code, out, err = run_cli("check-config", str(tmp_path / "nope.yaml"))
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and "cannot read the file" in err


def test_check_config_not_utf8_exits_2(tmp_path: Path, clean_env: None) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("node:\n  host: caf\u00e9\n".encode("latin-1"))
    code, _, err = run_cli("check-config", str(path))
    assert code == 2
    assert "radtriage: invalid configuration" in err


def test_the_threshold_is_the_cards_unless_config_sets_one() -> None:
    from types import SimpleNamespace

    card = SimpleNamespace(threshold=0.37)
    assert Config.model_validate({}).model.threshold is None
    assert Config.model_validate({}).model.operating_threshold(card) == 0.37
    assert Config.model_validate({"model": {"threshold": 0.6}}).model.operating_threshold(card) == 0.6
    assert Config.model_validate({"model": {"threshold": None}}).model.operating_threshold(card) == 0.37
