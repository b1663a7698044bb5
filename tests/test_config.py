"""Tests for edged.config: config.sh run by a real bash, validated against the declarations."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from edged.config import (
    Settings,
    example_config_sh,
    load_settings,
    settings_reference_markdown,
)
from edged.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
SHA = "ab" * 32


def write(tmp_path: Path, text: str, name: str = "config.sh") -> Path:
    """Write a config.sh into tmp_path and return its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> tuple[Settings, list[str]]:
    """Load a config.sh holding `text`."""
    return load_settings(write(tmp_path, text))


def defaults_in(base: Path) -> Settings:
    """The declared defaults, with relative paths resolved against `base`."""
    return dataclasses.replace(Settings(), model_loc=base / "model_repository")


def test_no_file_gives_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings, warnings = load_settings(None)
    assert settings == defaults_in(tmp_path)
    assert warnings == []
    assert settings.service_enabled_asr is True
    assert settings.backend == "auto"
    assert settings.riva_speech_api_port == 50051
    assert settings.models_asr == ("builtin:moonshine-base-en",)
    assert settings.models_vad == ("builtin:silero-vad",)
    assert settings.models_speaker == ()  # diarization is opt-in


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    settings, warnings = load(tmp_path, "# nothing set\n")
    assert settings == defaults_in(tmp_path)
    assert warnings == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("FALSE", False), ("yes", True), ("No", False), ("1", True), ("0", False),
     ("on", True), ("OFF", False)],
)
def test_bool_words(tmp_path: Path, text: str, expected: bool) -> None:
    settings, _ = load(tmp_path, f"service_enabled_tts={text}\n")
    assert settings.service_enabled_tts is expected


def test_int_choice_and_text(tmp_path: Path) -> None:
    settings, warnings = load(tmp_path, """
riva_speech_api_port="50052"
ort_intra_op_threads=4
backend=CPU
log_level=debug
listen_address='127.0.0.1'
""")
    assert settings.riva_speech_api_port == 50052
    assert settings.ort_intra_op_threads == 4
    assert settings.backend == "cpu"  # choices match without case, come back canonical
    assert settings.log_level == "DEBUG"
    assert settings.listen_address == "127.0.0.1"
    assert warnings == []


def test_arrays_with_spaces_quotes_and_unicode(tmp_path: Path) -> None:
    (tmp_path / "my models").mkdir()
    settings, _ = load(tmp_path, """
models_asr=(
    "builtin:moonshine-base-en"
    "my models/it's \\"quoted\\" é.rmir"
    "https://example.com/a b.rmir#sha256=%s"
)
models_tts="builtin:piper-joe-medium"
models_vad=""
""".replace("%s", SHA).replace("a b.rmir", "a%20b.rmir"))
    assert settings.models_asr == (
        "builtin:moonshine-base-en",
        str(tmp_path / "my models" / "it's \"quoted\" é.rmir"),
        f"https://example.com/a%20b.rmir#sha256={SHA}",
    )
    assert settings.models_tts == ("builtin:piper-joe-medium",)  # a scalar is a one-item list
    assert settings.models_vad == ()  # an empty string is an empty list


def test_empty_array_and_newline_value(tmp_path: Path) -> None:
    settings, _ = load(tmp_path, 'models_tts=()\nMODEL_DEPLOY_KEY=$\'line one\\nline two\'\n')
    assert settings.models_tts == ()
    assert settings.MODEL_DEPLOY_KEY == "line one\nline two"


def test_conditional_and_command_substitution(tmp_path: Path) -> None:
    settings, warnings = load(tmp_path, """
echo "this goes nowhere"
_cores=$(echo 6)
if [[ $(uname -s) == Linux ]]; then
    ort_intra_op_threads=$(( _cores / 2 ))
else
    ort_intra_op_threads=1
fi
[[ -n "$SITE" ]] || backend=cpu
""")
    assert settings.ort_intra_op_threads == 3
    assert settings.backend == "cpu"
    assert warnings == []  # _cores is a private helper


def test_env_is_visible_but_caller_environment_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("backend", "tensorrt")  # must not leak into config.sh
    path = write(tmp_path, 'listen_address="$SITE_ADDR"\n')
    settings, warnings = load_settings(path, env={"SITE_ADDR": "10.0.0.5"})
    assert settings.listen_address == "10.0.0.5"
    assert settings.backend == "auto"
    assert warnings == []  # SITE_ADDR came from env, not from the file


def test_relative_paths_resolve_against_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    monkeypatch.chdir(tmp_path)
    write(conf_dir, 'model_loc="../repo"\nmodels_asr=( "rmirs/asr.rmir:s3cret" )\n')
    settings, _ = load_settings(Path("etc/config.sh"))
    assert settings.model_loc == tmp_path / "repo"
    assert settings.models_asr == (f"{conf_dir / 'rmirs' / 'asr.rmir'}:s3cret",)
    absolute, _ = load(tmp_path, f'model_loc="{tmp_path}/abs"\n')
    assert absolute.model_loc == tmp_path / "abs"
    default, _ = load_settings(write(conf_dir, "", name="empty.sh"))
    assert default.model_loc == conf_dir / "model_repository"


def test_riva_model_loc_alias(tmp_path: Path) -> None:
    settings, warnings = load(tmp_path, 'riva_model_loc="riva-model-repo"\n')
    assert settings.model_loc == tmp_path / "riva-model-repo"
    assert warnings == []
    same, _ = load(tmp_path, f'riva_model_loc=repo\nmodel_loc="{tmp_path}/repo"\n')
    assert same.model_loc == tmp_path / "repo"


def test_riva_model_loc_conflict(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, 'riva_model_loc="a"\nmodel_loc="b"\n')
    message = str(err.value)
    assert 'model_loc="b"' in message and 'riva_model_loc="a"' in message
    assert "set only one" in message


def test_invalid_value_message(tmp_path: Path) -> None:
    path = write(tmp_path, 'backend="gpu"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(err.value) == (
        f'{path}: backend="gpu" is not valid; expected one of: auto, cpu, tensorrt.'
    )


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("riva_speech_api_port=0", ['riva_speech_api_port="0"', "from 1 to 65535"]),
        ("riva_speech_api_port=80a", ['"80a"', "an integer"]),
        ("ort_inter_op_threads=-1", ['"-1"', "at least 0"]),
        ("use_existing_rmirs=maybe", ['use_existing_rmirs="maybe"', "true or false"]),
        ("model_loc=''", ['model_loc=""', "a path"]),
        ("backend=(cpu tensorrt)", ['backend=( "cpu" "tensorrt" )', "not a bash array"]),
        ("models_asr=( nvidia/riva/rmir_asr:2.x )", ['"nvidia/riva/rmir_asr:2.x"', "builtin:NAME"]),
        ("models_tts=( https://x/m.rmir )", ['"https://x/m.rmir"', "#sha256="]),
        ("models_tts=( builtin: )", ['"builtin:"', "builtin:NAME"]),
        ("declare -A log_level=([a]=b)", ["log_level is an associative array", "DEBUG"]),
    ],
)
def test_invalid_values(tmp_path: Path, line: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, line + "\n")
    for word in words:
        assert word in str(err.value)


def test_all_errors_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "backend=gpu\nriva_speech_api_port=70000\nlog_level=loud\n")
    message = str(err.value)
    assert message.count("is not valid") == 3
    for name in ("backend", "riva_speech_api_port", "log_level"):
        assert name in message


def test_unknown_variable_warning(tmp_path: Path) -> None:
    path = write(tmp_path, "servce_enabled_asr=false\nzzz_nothing_like_it=1\n_private=1\n")
    settings, warnings = load_settings(path)
    assert settings.service_enabled_asr is True
    assert warnings == [
        f'{path}: unknown setting "servce_enabled_asr" (did you mean "service_enabled_asr"?); '
        "it is ignored.",
        f'{path}: unknown setting "zzz_nothing_like_it"; it is ignored.',
    ]


def test_riva_only_variables_are_noted(tmp_path: Path) -> None:
    settings, warnings = load(tmp_path, """
riva_target_gpu_device="auto"
gpus_to_use="device=0"
riva_speech_api_http_port="50000"
asr_language_code=("en-US")
service_enabled_asr=true
""")
    assert settings.service_enabled_asr is True
    assert len(warnings) == 4
    assert all("a Riva setting that edged does not use" in w for w in warnings)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("backend=cpu\nif then\n", "bash could not run it: line 2: syntax error"),
        ("models_asr=( a\n", "unexpected EOF"),
        ("backend=cpu\nfalse\n", "exit status 1"),
        ("set -e\nfalse\nbackend=cpu\n", "`exit`"),
        ("exit 0\n", "`return`"),
    ],
)
def test_bash_failures(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    assert words in str(err.value)
    assert str(err.value).startswith(str(tmp_path / "config.sh"))


def test_hanging_config_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edged.config._BASH_TIMEOUT_S", 0.3)
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "backend=$(sleep 30; echo cpu)\n")
    assert "longer than 0.3 s" in str(err.value)


def test_stderr_noise_is_a_warning(tmp_path: Path) -> None:
    settings, warnings = load(tmp_path, "no_such_command_edged\nbackend=cpu\n")
    assert settings.backend == "cpu"
    assert len(warnings) == 1 and "no_such_command_edged" in warnings[0]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path / "config.sh")
    assert "does not exist" in str(err.value)
    assert "edged config --example > config.sh" in str(err.value)


def test_secret_not_in_repr(tmp_path: Path) -> None:
    settings, _ = load(tmp_path, """
MODEL_DEPLOY_KEY="hunter2-deploy"
models_asr=( "asr.rmir:hunter3-local" )
""")
    assert settings.MODEL_DEPLOY_KEY == "hunter2-deploy"
    for text in (repr(settings), str(settings)):
        assert "hunter2" not in text and "hunter3" not in text
        assert "asr.rmir:***" in text


def test_shipped_config_sh_is_the_example_and_parses_to_defaults() -> None:
    shipped = REPO / "config.sh"
    assert shipped.read_text(encoding="utf-8") == example_config_sh(), (
        "config.sh is out of date; regenerate it with: python -c \"from edged.config import "
        "example_config_sh; print(example_config_sh(), end='')\" > config.sh"
    )
    settings, warnings = load_settings(shipped)
    assert settings == defaults_in(REPO)
    assert warnings == []
    assigned = set(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)=", shipped.read_text(), re.MULTILINE))
    assert assigned == {f.name for f in dataclasses.fields(Settings)}


def test_reference_markdown_lists_every_setting() -> None:
    table = settings_reference_markdown()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == [f.name for f in dataclasses.fields(Settings)]
    assert "riva_model_loc" in table
    assert all(row.count(" | ") == 3 for row in rows)  # no stray pipe splits a cell


def test_readme_embeds_the_reference() -> None:
    readme = REPO / "README.md"
    if not readme.is_file():
        pytest.skip("README.md does not exist yet")
    text = readme.read_text(encoding="utf-8")
    match = re.search(r"<!-- settings:begin -->(.*?)<!-- settings:end -->", text, re.DOTALL)
    if match is None:
        pytest.skip("README.md has no <!-- settings:begin --> / <!-- settings:end --> block yet")
    assert match.group(1).strip() == settings_reference_markdown().strip(), (
        "README.md's settings table is out of date; paste settings_reference_markdown() between "
        "the markers"
    )


def test_overrides_win_over_the_file_and_resolve_paths_like_it(tmp_path: Path) -> None:
    """`edged start --set NAME=VALUE`: after config.sh, validated, relative paths against its folder."""
    folder = tmp_path / "user"
    folder.mkdir()
    cfg = folder / "config.sh"
    cfg.write_text('model_loc="model_repository"\nriva_speech_api_port=50051\n', encoding="utf-8")
    settings, _ = load_settings(cfg, overrides={"riva_speech_api_port": "50099", "http_enabled": "false"})
    assert settings.riva_speech_api_port == 50099 and settings.http_enabled is False
    assert settings.model_loc == folder / "model_repository"
    moved, _ = load_settings(cfg, overrides={"riva_model_loc": "elsewhere"})
    assert moved.model_loc == folder / "elsewhere"
    with pytest.raises(ConfigError, match="not a setting of edged"):
        load_settings(cfg, overrides={"riva_speech_port": "1"})
    with pytest.raises(ConfigError, match="riva_speech_api_port"):
        load_settings(cfg, overrides={"riva_speech_api_port": "many"})
