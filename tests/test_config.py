"""Configuration: the example validates, every kind of mistake names its key and line, and
secrets (the contents of the password and key files) never reach a log."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from common.errors import ConfigError
from gateway.config import (
    AccessSection,
    Config,
    config_from_mapping,
    find_key_line,
    load_config,
    parse_config,
)
from gateway.console.config import ConsoleSection
from gateway.daemon import DaemonHooks, Gateway, client_options, run
from gateway.homeassistant.config import HomeAssistantSection
from gateway.metrics.config import MetricsSection
from gateway.mqtt import UplinkState
from gateway.sms.config import SmsSection
from tests.conftest import BrokerFactory
from tests.support.paths import REPO

EXAMPLE = REPO / "config" / "gateway.toml"
EX_CONFIG = 78
CLI_TIMEOUT_S = 30


def check_config(path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check-config", *options, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def _write(tmp_path: Path, text: str, name: str = "gateway.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- the example -------------------------------------------------------------------------------


def test_example_config_validates_with_check_config() -> None:
    # The example names /etc/eldergate files that exist only on an installed gateway: the
    # file alone is validated here; loading the files it names is tested below.
    result = check_config(EXAMPLE, "--syntax-only")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert "pinghu-bnk-01" in result.stdout
    assert result.stderr == ""


def test_example_config_loads_with_the_documented_values() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.gateway.id == "pinghu-bnk-01"
    assert cfg.uplink.tls.enabled and cfg.uplink.tls.ca_file
    assert cfg.topic_prefix == "eldergate/pinghu-bnk-01"
    assert cfg.client_id == "eldergate-pinghu-bnk-01"
    assert cfg.outbox_path == Path("/var/lib/eldergate/outbox.db")
    # Defaults that the example spells out agree with the model's defaults.
    assert cfg.forwarding == Config(gateway=cfg.gateway).forwarding
    assert cfg.outbox == Config(gateway=cfg.gateway).outbox


def test_example_config_mentions_every_key_of_the_model() -> None:
    """The annotated example documents every setting (so none is a hidden surprise). The
    console, the SMS path, the metrics and Home Assistant are off in the example: their
    sections are there, commented out, with every key."""
    text = EXAMPLE.read_text(encoding="utf-8")
    off = re.sub(r"(?m)^# ?", "", "\n".join(_commented_block(text, "[console]")))
    sms = re.sub(r"(?m)^# ?", "", "\n".join(_commented_block(text, "[sms]")))
    metrics = re.sub(r"(?m)^# ?", "", "\n".join(_commented_block(text, "[metrics]")))
    home = re.sub(r"(?m)^# ?", "", "\n".join(_commented_block(text, "[homeassistant]")))
    builtins = Config(gateway=load_config(EXAMPLE).gateway)
    assert builtins.console is None and load_config(EXAMPLE).console is None
    missing = []

    def walk(prefix: str, value: Any, source: str) -> None:
        for key, sub in value.items():
            dotted = f"{prefix}.{key}" if prefix else key
            if isinstance(sub, dict):
                walk(dotted, sub, source)
            elif find_key_line(source, dotted) is None and all(
                find_key_line(block, dotted) is None for block in (off, sms, metrics, home)
            ):
                missing.append(dotted)

    walk("", msgspec.to_builtins(builtins), text)
    walk("access", msgspec.to_builtins(AccessSection()), text)
    walk("console", msgspec.to_builtins(ConsoleSection()), off)
    commented_sms = msgspec.convert(tomllib.loads(sms)["sms"], SmsSection)
    walk("sms", msgspec.to_builtins(commented_sms), sms)
    walk("metrics", msgspec.to_builtins(MetricsSection()), metrics)
    walk("homeassistant", msgspec.to_builtins(HomeAssistantSection()), home)
    assert missing == []


def _commented_block(text: str, header: str) -> list[str]:
    """The commented-out lines from `# <header>` to the next line that is not a comment."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"# {header}"))
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line)
    return block


def test_the_camera_and_motion_sections_are_what_the_drivers_read_with_their_defaults() -> None:
    """`[access.camera]` and `[access.motion]` are passed to the drivers as they are (their
    CameraParams and MotionParams): every field a driver reads is a key, with the default the
    driver's own settings class has for standalone use."""
    from drivers.camera import CameraParams, CameraSettings
    from drivers.motion import MotionParams, MotionSettings

    for protocol, section, standalone in (
        (CameraParams, AccessSection().camera, CameraSettings("0")),
        (MotionParams, AccessSection().motion, MotionSettings()),
    ):
        names = [n for n, v in vars(protocol).items() if isinstance(v, property)]
        assert names
        for name in names:
            if name != "source":
                assert getattr(section, name) == getattr(standalone, name), name
    with pytest.raises(ConfigError, match="reopen_min_s"):
        config_from_mapping(
            {"gateway": {"id": "gw-1"}, "access": {"camera": {"reopen_min_s": 40.0}}}
        )
    with pytest.raises(ConfigError, match="access.camera.source: has blanks around it"):
        config_from_mapping(
            {"gateway": {"id": "gw-1"}, "access": {"camera": {"source": " /dev/video0"}}}
        )


# -- bad configurations: key and line ----------------------------------------------------------

BASE = """\
[gateway]
id = "gw-1"
state_dir = "/tmp/eldergate-test"

[uplink]
host = "127.0.0.1"
port = 1883
"""


def _line_of(text: str, needle: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in the config text")


# (id, config text, dotted key, a unique fragment of the offending line)
BAD_CONFIGS: list[tuple[str, str, str, str]] = [
    (
        "unknown-key-nested-table",
        BASE + "bogus = 1\n",
        "uplink.bogus",
        "bogus = 1",
    ),
    (
        "unknown-key-deeper-table",
        BASE + "\n[uplink.tls]\nenabled = false\nverify = false\n",
        "uplink.tls.verify",
        "verify = false",
    ),
    (
        "unknown-nested-table",
        BASE + "\n[uplink.proxy]\nhost = 'x'\n",
        "uplink.proxy",
        "[uplink.proxy]",
    ),
    ("wrong-type-int", BASE.replace("port = 1883", 'port = "1883"'), "uplink.port", "port ="),
    ("wrong-type-bool", BASE.replace("port = 1883", "port = true"), "uplink.port", "port ="),
    (
        "wrong-type-in-list",
        BASE + '\n[forwarding]\nrequire_consumer_lanes = [0, "1"]\n',
        "forwarding.require_consumer_lanes",
        "require_consumer_lanes",
    ),
    (
        "wrong-type-table",
        BASE + "\n[health]\ninterval_s = '60'\n",
        "health.interval_s",
        "interval_s",
    ),
    ("bad-enum-protocol", BASE + 'protocol = "mqtt4"\n', "uplink.protocol", "protocol ="),
    ("bad-enum-log-level", BASE + '\n[logging]\nlevel = "TRACE"\n', "logging.level", "level ="),
    ("port-zero", BASE.replace("port = 1883", "port = 0"), "uplink.port", "port ="),
    ("port-too-big", BASE.replace("port = 1883", "port = 70000"), "uplink.port", "port ="),
    ("keepalive-too-small", BASE + "keepalive_s = 1\n", "uplink.keepalive_s", "keepalive_s"),
    ("window-zero", BASE + "\n[forwarding]\nwindow = 0\n", "forwarding.window", "window ="),
    (
        "health-interval-too-small",
        BASE + "\n[health]\ninterval_s = 0.5\n",
        "health.interval_s",
        "interval_s",
    ),
    (
        "reply-prefix-covers-own-topics",
        BASE + '\n[commands]\nresponse_topic_prefixes = ["eldergate/{gateway_id}/"]\n',
        "commands.response_topic_prefixes",
        "response_topic_prefixes",
    ),
    (
        "reply-prefix-covers-every-gateway",
        BASE + '\n[commands]\nresponse_topic_prefixes = ["eldergate/"]\n',
        "commands.response_topic_prefixes",
        "response_topic_prefixes",
    ),
    (
        "reply-prefix-wildcard",
        BASE + '\n[commands]\nresponse_topic_prefixes = ["replies/#"]\n',
        "commands.response_topic_prefixes",
        "response_topic_prefixes",
    ),
    (
        "max-depth-zero",
        BASE + "\n[commands]\nmax_depth = 0\n",
        "commands.max_depth",
        "max_depth",
    ),
    (
        "queue-bytes-below-payload",
        BASE + "\n[commands]\nqueue_max_bytes = 1024\n",
        "commands.queue_max_bytes",
        "queue_max_bytes",
    ),
    (
        "queue-size-zero",
        BASE + "\n[commands]\nqueue_size = 0\n",
        "commands.queue_size",
        "queue_size",
    ),
    (
        "max-payload-too-small",
        BASE + "\n[commands]\nmax_payload_bytes = 100\n",
        "commands.max_payload_bytes",
        "max_payload_bytes",
    ),
    ("max-rows-too-small", BASE + "\n[outbox]\nmax_rows = 10\n", "outbox.max_rows", "max_rows"),
    (
        "negative-skew",
        BASE + "\n[commands]\nmax_clock_skew_s = -1\n",
        "commands.max_clock_skew_s",
        "max_clock_skew_s",
    ),
    (
        "tls-without-ca",
        BASE + '\n[uplink.tls]\nenabled = true\nca_file = ""\n',
        "uplink.tls.ca_file",
        "ca_file",
    ),
    (
        "cert-without-key",
        BASE
        + '\n[uplink.tls]\nenabled = true\nca_file = "/ca.pem"\ncert_file = "/c.pem"\n'
        + 'key_file = ""\n',
        "uplink.tls.cert_file",
        "cert_file",
    ),
    (
        "tls-files-without-tls",
        BASE + '\n[uplink.tls]\nenabled = false\nca_file = "/ca.pem"\n',
        "uplink.tls.enabled",
        "enabled",
    ),
    (
        "password-without-username",
        BASE + 'password_file = "/etc/eldergate/pw"\n',
        "uplink.password_file",
        "password_file",
    ),
    (
        "lane0-reserved-equals-window",
        BASE + "\n[forwarding]\nwindow = 8\nlane0_reserved = 8\n",
        "forwarding.lane0_reserved",
        "lane0_reserved",
    ),
    (
        "lane0-reserved-above-window",
        BASE + "\n[forwarding]\nwindow = 8\nlane0_reserved = 20\n",
        "forwarding.lane0_reserved",
        "lane0_reserved",
    ),
    (
        "reconnect-min-above-max",
        BASE + "\n[uplink.reconnect]\nmin_delay_s = 10\nmax_delay_s = 1\n",
        "uplink.reconnect.min_delay_s",
        "min_delay_s",
    ),
    ("gateway-id-upper-case", BASE.replace('"gw-1"', '"GW-1"'), "gateway.id", "id ="),
    ("gateway-id-underscore", BASE.replace('"gw-1"', '"gw_1"'), "gateway.id", "id ="),
    ("gateway-id-leading-dash", BASE.replace('"gw-1"', '"-gw"'), "gateway.id", "id ="),
    ("gateway-id-empty", BASE.replace('"gw-1"', '""'), "gateway.id", "id ="),
    ("gateway-id-too-long", BASE.replace('"gw-1"', f'"{"a" * 64}"'), "gateway.id", "id ="),
    ("gateway-id-slash", BASE.replace('"gw-1"', '"gw/1"'), "gateway.id", "id ="),
    (
        "topic-prefix-plus",
        BASE + 'topic_prefix = "eldergate/+/{gateway_id}"\n',
        "uplink.topic_prefix",
        "topic_prefix",
    ),
    (
        "topic-prefix-hash",
        BASE + 'topic_prefix = "eldergate/#"\n',
        "uplink.topic_prefix",
        "topic_prefix",
    ),
    (
        "topic-prefix-trailing-slash",
        BASE + 'topic_prefix = "eldergate/{gateway_id}/"\n',
        "uplink.topic_prefix",
        "topic_prefix",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [pytest.param(t, k, f, id=i) for i, t, k, f in BAD_CONFIGS],
)
def test_bad_config_names_key_and_line(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    """In-process (fast) for every case; the CLI is exercised in the test below."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    line = _line_of(text, fragment)
    assert f"{path}:{line}: {key}: " in str(info.value)


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        pytest.param(t, k, f, id=i)
        for i, t, k, f in BAD_CONFIGS
        if i
        in {
            "unknown-key-nested-table",
            "wrong-type-int",
            "port-too-big",
            "tls-without-ca",
            "cert-without-key",
            "password-without-username",
            "lane0-reserved-equals-window",
            "gateway-id-upper-case",
            "topic-prefix-plus",
        }
    ],
)
def test_check_config_cli_reports_key_and_line(
    tmp_path: Path, text: str, key: str, fragment: str
) -> None:
    path = _write(tmp_path, text)
    result = check_config(path)
    assert result.returncode == EX_CONFIG
    assert result.stdout == ""
    assert f"{path}:{_line_of(text, fragment)}: {key}: " in result.stderr
    assert "Traceback" not in result.stderr


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        BASE.replace('"gw-1"', '"GW"').replace("port = 1883", "port = 0")
        + "\n[forwarding]\nwindow = 4\nlane0_reserved = 4\n"
    )
    path = _write(tmp_path, text)
    result = check_config(path)
    assert result.returncode == EX_CONFIG
    for key, fragment in (
        ("gateway.id", "id ="),
        ("uplink.port", "port ="),
        ("forwarding.lane0_reserved", "lane0_reserved"),
    ):
        assert f"{path}:{_line_of(text, fragment)}: {key}: " in result.stderr


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        pytest.param('foo = 1\n\n[gateway]\nid = "gw-1"\n', "foo", "foo = 1", id="key"),
        pytest.param(
            '[gateway]\nid = "gw-1"\n\n[mqtt]\nhost = "x"\n', "mqtt", "[mqtt]", id="table"
        ),
    ],
)
def test_unknown_top_level_key_names_key_and_line(
    tmp_path: Path, text: str, key: str, fragment: str
) -> None:
    """Regression: msgspec reports a top-level unknown key without a path, and the line was
    left out."""
    path = _write(tmp_path, text)
    result = check_config(path)
    assert result.returncode == EX_CONFIG
    assert f"{path}:{_line_of(text, fragment)}: {key}: " in result.stderr


def test_combination_with_omitted_key_still_names_the_key(tmp_path: Path) -> None:
    """TLS on without any ca_file line: there is no line of the key to give; the key is named."""
    text = BASE + "\n[uplink.tls]\nenabled = true\n"
    path = _write(tmp_path, text)
    result = check_config(path)
    assert result.returncode == EX_CONFIG
    assert "uplink.tls.ca_file: " in result.stderr


def test_missing_required_key(tmp_path: Path) -> None:
    text = '[gateway]\nstate_dir = "/tmp/x"\n'
    path = _write(tmp_path, text)
    result = check_config(path)
    assert result.returncode == EX_CONFIG
    assert f"{path}:1: gateway: " in result.stderr and "`id`" in result.stderr
    result = check_config(_write(tmp_path, "[uplink]\nport = 1883\n", "nogw.toml"))
    assert result.returncode == EX_CONFIG and "`gateway`" in result.stderr


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    text = '[gateway]\nid = "gw-1"\n\n[uplink]\nport = = 3\n'
    path = _write(tmp_path, text)
    result = check_config(path)
    assert result.returncode == EX_CONFIG
    assert "not valid TOML" in result.stderr
    assert "line 5" in result.stderr
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_duplicate_key_is_invalid_toml(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE + "port = 1884\n")
    result = check_config(path)
    assert result.returncode == EX_CONFIG
    assert "not valid TOML" in result.stderr and "line 8" in result.stderr


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    result = check_config(path)
    assert result.returncode == EX_CONFIG
    assert str(path) in result.stderr and "cannot read" in result.stderr
    assert "config/gateway.toml" in result.stderr  # the next step: where to start from
    assert "Traceback" not in result.stderr


def test_config_from_mapping_validates_like_the_file() -> None:
    good = {"gateway": {"id": "gw-1"}, "uplink": {"port": 1884}}
    assert config_from_mapping(good).uplink.port == 1884
    for bad, key in (
        ({"gateway": {"id": "gw-1"}, "uplink": {"port": 0}}, "uplink.port"),
        ({"gateway": {"id": "gw-1", "x": 1}}, "x"),
        ({"gateway": {"id": "gw-1"}, "forwarding": {"window": 2, "lane0_reserved": 2}}, "lane0"),
        ({"gateway": {"id": "gw-1"}, "uplink": {"password_file": "/pw"}}, "password_file"),
    ):
        with pytest.raises(ConfigError, match=re.escape(key)):
            config_from_mapping(bad)


def test_config_is_frozen() -> None:
    cfg = config_from_mapping({"gateway": {"id": "gw-1"}})
    with pytest.raises(AttributeError):
        cfg.gateway.id = "other"  # type: ignore[misc]


# -- find_key_line -----------------------------------------------------------------------------

FIND_TEXT = """\
top = 1                 # line 1
  # port = 9            # line 2: a comment, not a key
[gateway]               # line 3
id = "gw"               # line 4
port_extra = 2          # line 5: not `port`
[uplink]                # line 6
port = 1883             # line 7
  host = "x"            # line 8: indented
[ uplink . tls ]        # line 9: spaces in the header
enabled = true          # line 10
[uplink.reconnect]      # line 11
port = 5                # line 12: a `port` in another table
min_delay_s=0.5         # line 13: no spaces around '='
"""


@pytest.mark.parametrize(
    ("key", "line"),
    [
        ("top", 1),
        ("gateway", 3),
        ("gateway.id", 4),
        ("gateway.port_extra", 5),
        ("uplink", 6),
        ("uplink.port", 7),
        ("uplink.host", 8),
        ("uplink.tls", 9),
        ("uplink.tls.enabled", 10),
        ("uplink.reconnect", 11),
        ("uplink.reconnect.port", 12),
        ("uplink.reconnect.min_delay_s", 13),
    ],
)
def test_find_key_line_finds(key: str, line: int) -> None:
    assert find_key_line(FIND_TEXT, key) == line


@pytest.mark.parametrize(
    "key",
    [
        "",  # nothing to look for
        "port",  # only commented out at the top level
        "gateway.port",  # `port_extra` is another key
        "uplink.tls.port",  # not in that table
        "uplink.keepalive_s",  # absent
        "nosuch.table.key",
        "top.x",
    ],
)
def test_find_key_line_returns_none_when_absent(key: str) -> None:
    assert find_key_line(FIND_TEXT, key) is None


def test_find_key_line_on_the_example() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert find_key_line(text, "uplink.tls.ca_file") == _line_of(text, 'ca_file = "')
    assert find_key_line(text, "forwarding.lane0_reserved") == _line_of(text, "lane0_reserved =")
    assert find_key_line(text, "uplink.reconnect") == _line_of(text, "[uplink.reconnect]")


# -- secrets never printed ---------------------------------------------------------------------


def _secret_files(tmp_path: Path) -> tuple[str, Path, str, Path]:
    password = "pw-" + secrets.token_urlsafe(18)
    password_file = tmp_path / "mqtt-password"
    password_file.write_text(password + "\n", encoding="utf-8")
    password_file.chmod(0o600)
    key_hex = secrets.token_hex(32)
    key_file = tmp_path / "command.key"
    key_file.write_text(key_hex + "\n", encoding="utf-8")
    key_file.chmod(0o600)
    return password, password_file, key_hex, key_file


def test_redacted_hides_secret_paths_and_never_reads_the_files(tmp_path: Path) -> None:
    password, password_file, key_hex, key_file = _secret_files(tmp_path)
    cfg = config_from_mapping(
        {
            "gateway": {"id": "gw-1", "state_dir": str(tmp_path / "state")},
            "uplink": {"username": "gw-1", "password_file": str(password_file)},
            "commands": {"hmac_key_file": str(key_file)},
        }
    )
    red = cfg.redacted()
    assert red["uplink"]["password_file"] == "<set>"
    assert red["commands"]["hmac_key_file"] == "<set>"
    assert red["uplink"]["username"] == "gw-1"
    dumped = json.dumps(red)
    for text in (dumped, repr(cfg), str(cfg), repr(client_options(cfg))):
        assert password not in text
        assert key_hex not in text
    # The password is read for the uplink, and still not shown by its repr.
    assert client_options(cfg).password == password
    # Empty secret paths stay empty (not "<set>").
    plain = config_from_mapping({"gateway": {"id": "gw-1"}}).redacted()
    assert plain["uplink"]["password_file"] == "" and plain["commands"]["hmac_key_file"] == ""
    # redacted() returns a copy: the model itself is untouched.
    assert cfg.uplink.password_file == str(password_file)


def _config_mapping(
    tmp_path: Path, host: str, port: int, password_file: Path, key_file: Path
) -> dict[str, Any]:
    return {
        "gateway": {"id": "gw-secret", "state_dir": str(tmp_path / "state")},
        "logging": {"level": "DEBUG"},
        "uplink": {
            "host": host,
            "port": port,
            "username": "gw-secret",
            "password_file": str(password_file),
            "reconnect": {"min_delay_s": 0.1, "max_delay_s": 0.5, "auth_failure_delay_s": 0.5},
        },
        "commands": {"hmac_key_file": str(key_file)},
    }


async def test_daemon_logs_never_contain_secrets(
    tmp_path: Path, broker_factory: BrokerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    password, password_file, key_hex, key_file = _secret_files(tmp_path)
    auth = broker_factory("auth", username="gw-secret", password=password, allow_anonymous=False)
    (tmp_path / "state").mkdir()
    cfg = config_from_mapping(
        _config_mapping(tmp_path, auth.host, auth.port, password_file, key_file)
    )
    caplog.set_level(logging.DEBUG)
    stop = asyncio.Event()
    ready: asyncio.Future[Gateway] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run(cfg, stop=stop, hooks=DaemonHooks(on_ready=ready.set_result)), name="daemon"
    )
    try:
        async with asyncio.timeout(15):
            gateway = await asyncio.shield(ready)
            # It did log in with the password from the file (the broker refuses anonymous).
            while gateway.uplink.state is not UplinkState.CONNECTED:
                assert not task.done()
                await asyncio.sleep(0.02)
        logging.getLogger("gateway.test").info("configuration: %s", cfg.redacted())
    finally:
        stop.set()
        async with asyncio.timeout(15):
            assert await task == 0
    assert caplog.records
    assert any("connected to MQTT broker" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        assert password not in record.getMessage(), record
        assert key_hex not in record.getMessage(), record
    assert password not in caplog.text and key_hex not in caplog.text  # tracebacks too


async def test_daemon_with_wrong_password_does_not_log_it(
    tmp_path: Path, broker_factory: BrokerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    password, password_file, key_hex, key_file = _secret_files(tmp_path)
    auth = broker_factory(
        "auth", username="gw-secret", password=password + "-other", allow_anonymous=False
    )
    (tmp_path / "state").mkdir()
    cfg = config_from_mapping(
        _config_mapping(tmp_path, auth.host, auth.port, password_file, key_file)
    )
    caplog.set_level(logging.DEBUG)
    stop = asyncio.Event()
    task = asyncio.create_task(run(cfg, stop=stop), name="daemon")
    try:
        async with asyncio.timeout(15):
            while not any("MQTT connect failed" in r.getMessage() for r in caplog.records):
                assert not task.done()
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await task
    assert password not in caplog.text and key_hex not in caplog.text


def test_run_command_logs_redacted_configuration(
    tmp_path: Path, broker_factory: BrokerFactory
) -> None:
    """`eldergate run` logs its configuration at start: redacted, without file contents."""
    password, password_file, key_hex, key_file = _secret_files(tmp_path)
    auth = broker_factory("auth", username="gw-secret", password=password, allow_anonymous=False)
    mapping = _config_mapping(tmp_path, auth.host, auth.port, password_file, key_file)
    (tmp_path / "state").mkdir()
    reconnect = mapping["uplink"].pop("reconnect")
    lines = [
        "[gateway]",
        *(f"{k} = {json.dumps(v)}" for k, v in mapping["gateway"].items()),
        "[logging]",
        'level = "DEBUG"',
        "[uplink]",
        *(f"{k} = {json.dumps(v)}" for k, v in mapping["uplink"].items()),
        "[uplink.reconnect]",
        *(f"{k} = {json.dumps(v)}" for k, v in reconnect.items()),
        "[commands]",
        f"hmac_key_file = {json.dumps(str(key_file))}",
    ]
    config_path = _write(tmp_path, "\n".join(lines) + "\n")
    log_path = tmp_path / "daemon.stderr"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(config_path)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while "connected to MQTT broker" not in log_path.read_text(errors="replace"):
            assert proc.poll() is None, log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    output = log_path.read_text(errors="replace")
    config_lines = [line for line in output.splitlines() if "configuration: " in line]
    assert len(config_lines) == 1
    assert '"password_file": "<set>"' in config_lines[0]
    assert '"hmac_key_file": "<set>"' in config_lines[0]
    assert password not in output
    assert key_hex not in output
    assert "stopped" in output


def test_parse_config_accepts_minimal_config() -> None:
    cfg = parse_config('[gateway]\nid = "gw-1"\n')
    assert cfg.uplink.protocol == "mqtt5"
    assert cfg.topic_prefix == "eldergate/gw-1"


def test_error_inside_an_array_of_tables_names_the_right_entry_line(tmp_path: Path) -> None:
    text = (
        '[gateway]\nid = "gw"\n\n[buttons]\n\n'
        '[[buttons.devices]]\nid = "t-2000001a"\n\n'
        '[[buttons.devices]]\nid = "t-2000001b"\nsupervision_s = "lots"\n'
    )
    with pytest.raises(ConfigError, match=r"cfg\.toml:11: buttons\.devices\.supervision_s"):
        parse_config(text, source="cfg.toml")
    assert find_key_line(text, "buttons.devices.id", 1) == 10
    assert find_key_line(text, "buttons.devices.id", 0) == 7


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('[uplink]\ntopic_prefix = ""\n', "uplink.topic_prefix"),
        ('[commands]\nrequire_signature = ["ping"]\n', "commands.require_signature"),
    ],
)
def test_more_impossible_combinations(extra: str, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        parse_config('[gateway]\nid = "gw"\n' + extra, source="cfg.toml")


# -- files the configuration names, encodings, numbers (issue 8, items 8 and 10) ----------------


def eldergate_run(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "--config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def _minimal(tmp_path: Path, extra: str = "") -> str:
    # port 9: nothing listens; these configs must be refused before any connection
    state = json.dumps(str(tmp_path / "state"))
    return f'[gateway]\nid = "gw-1"\nstate_dir = {state}\n[uplink]\nport = 9\n{extra}'


def test_non_utf8_config_is_exit_78_naming_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(_minimal(tmp_path).encode() + b"[buttons]\n# Fr\xe9d\xe9ric\n")
    with pytest.raises(ConfigError, match=r"not UTF-8.*offset"):
        load_config(path)
    for result in (check_config(path), eldergate_run(path)):
        assert result.returncode == EX_CONFIG, result.stderr
        assert f"{path}:7: not UTF-8 text (byte 0xe9" in result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("connect_timeout_s = inf\n", "uplink.connect_timeout_s"),
        ("[uplink.reconnect]\nmax_delay_s = nan\n", "uplink.reconnect.max_delay_s"),
        ("[forwarding]\nreplay_rate = inf\n", "forwarding.replay_rate"),
        ("[forwarding]\nack_timeout_s = +inf\n", "forwarding.ack_timeout_s"),
        ("[outbox]\ngroup_commit_window_ms = nan\n", "outbox.group_commit_window_ms"),
        ("[commands]\nmax_ttl_s = inf\n", "commands.max_ttl_s"),
        ("[commands]\nunsigned_results_per_s = inf\n", "commands.unsigned_results_per_s"),
        ("[health]\ninterval_s = inf\n", "health.interval_s"),
        ("[buttons]\ncancel_window_s = nan\n", "buttons.cancel_window_s"),
        ("[buttons]\nack_deadline_s = -inf\n", "buttons.ack_deadline_s"),
        ('[[buttons.devices]]\nid = "t-1"\nsupervision_s = inf\n', "buttons.devices.supervision_s"),
        ("[access.camera]\nfps = inf\n", "access.camera.fps"),
        ("[access.decision]\nthreshold = nan\n", "access.decision.threshold"),
    ],
)
def test_inf_and_nan_are_refused_for_every_float_setting(
    tmp_path: Path, extra: str, key: str
) -> None:
    text = _minimal(tmp_path, extra)
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}: must be a finite number"):
        parse_config(text)


def test_inf_duration_is_exit_78_from_the_cli(tmp_path: Path) -> None:
    path = _write(tmp_path, _minimal(tmp_path, "[forwarding]\nack_timeout_s = inf\n"))
    for result in (check_config(path), eldergate_run(path)):
        assert result.returncode == EX_CONFIG, result.stderr
        assert f"{path}:7: forwarding.ack_timeout_s: must be a finite number" in result.stderr


def _key_config(tmp_path: Path, content: bytes) -> Path:
    key = tmp_path / "command.key"
    key.write_bytes(content)
    key.chmod(0o600)
    extra = f"[commands]\nhmac_key_file = {json.dumps(str(key))}\n"
    return _write(tmp_path, _minimal(tmp_path, extra))


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(secrets.token_hex(16).encode() + b"\n", id="hex-16-bytes"),
        pytest.param(secrets.token_hex(31).encode(), id="hex-31-bytes"),
        pytest.param(b"correct-horse-battery\n", id="text-21-bytes"),
        pytest.param(b"\x00\x01" + secrets.token_bytes(14), id="binary-16-bytes"),
    ],
)
def test_command_keys_shorter_than_32_bytes_are_refused(tmp_path: Path, content: bytes) -> None:
    path = _key_config(tmp_path, content)
    key_file = tmp_path / "command.key"
    for result in (check_config(path), eldergate_run(path)):
        assert result.returncode == EX_CONFIG, result.stderr
        assert f"commands.hmac_key_file: {key_file}" in result.stderr
        assert "at least 32" in result.stderr


def test_a_32_byte_command_key_is_accepted(tmp_path: Path) -> None:
    path = _key_config(tmp_path, secrets.token_hex(32).encode() + b"\n")
    result = check_config(path)
    assert result.returncode == 0, result.stderr


def _tls_config(
    tmp_path: Path, ca: Path, cert: Path | None = None, key: Path | None = None
) -> Path:
    lines = f"[uplink.tls]\nenabled = true\nca_file = {json.dumps(str(ca))}\n"
    if cert is not None and key is not None:
        lines += f"cert_file = {json.dumps(str(cert))}\nkey_file = {json.dumps(str(key))}\n"
    name = f"tls-{len(list(tmp_path.glob('tls-*.toml')))}.toml"
    return _write(tmp_path, _minimal(tmp_path, lines), name)


def test_check_config_loads_every_tls_file(tmp_path: Path) -> None:
    from tests.support.tls import generate_tls_files

    pki = generate_tls_files(tmp_path / "pki")
    other = generate_tls_files(tmp_path / "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
    missing = tmp_path / "absent.pem"
    good = check_config(_tls_config(tmp_path, pki.ca_cert, pki.client_cert, pki.client_key))
    assert good.returncode == 0, good.stderr
    cases = [
        (_tls_config(tmp_path, missing), f"uplink.tls.ca_file {missing}: No such file"),
        (_tls_config(tmp_path, garbage), f"uplink.tls.ca_file {garbage}: "),
        (
            _tls_config(tmp_path, pki.ca_cert, pki.client_cert, other.client_key),
            f"uplink.tls.cert_file {pki.client_cert} / {other.client_key}",
        ),
        (
            _tls_config(tmp_path, pki.ca_cert, pki.client_cert, garbage),
            f"uplink.tls.cert_file {pki.client_cert} / {garbage}",
        ),
        (
            _tls_config(tmp_path, pki.ca_cert, pki.client_cert, missing),
            f"uplink.tls.cert_file {pki.client_cert} / {missing}: No such file",
        ),
    ]
    for path, needle in cases:
        result = check_config(path)
        assert result.returncode == EX_CONFIG, (needle, result.stdout)
        assert needle in result.stderr, result.stderr
        assert "OK" not in result.stdout


def test_plain_check_config_of_the_example_reports_its_missing_files() -> None:
    result = check_config(EXAMPLE)
    assert result.returncode == EX_CONFIG
    assert "uplink.tls.ca_file /etc/eldergate/ca.pem" in result.stderr
