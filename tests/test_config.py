"""Unit tests of the settings read from environment variables."""

import pytest
from path import Path

from stepup.queue.config import Config, ConfigError, OnChange, QueryMethod

HOME = {"HOME": "/home/alice"}


def read(**variables: str) -> Config:
    return Config.from_environ(HOME | variables)


def test_defaults():
    config = Config.from_environ(HOME)
    assert config.onchange is OnChange.RAISE
    assert config.onchange_source == ""
    assert config.debug is False
    assert config.cache_timeout == 30.0
    assert config.polling_interval == 1.0
    assert config.jitter == 0.5
    assert config.settle_time == 0.5
    assert config.query is QueryMethod.SQUEUE
    assert config.command_timeout == 60.0
    assert config.submit_retries == 5
    assert isinstance(config.submit_retries, int)
    assert config.submit_backoff == 10.0
    assert config.ret_timeout == 60.0
    assert config.cache_dir == Path("/home/alice/.cache/stepup-queue")
    assert isinstance(config.cache_dir, Path)
    assert config.sleep_range() == (1.0, 1.5)


def test_defaults_equal_dataclass_defaults(monkeypatch):
    monkeypatch.setenv("HOME", "/home/bob")
    assert Config.from_environ(HOME) == Config(cache_dir=Path("/home/alice/.cache/stepup-queue"))
    assert Config().cache_dir == Path("/home/bob/.cache/stepup-queue")


def test_empty_values_mean_default():
    names = [
        "STEPUP_QUEUE_ONCHANGE",
        "STEPUP_QUEUE_RESUBMIT_CHANGED_INPUTS",
        "STEPUP_SBATCH_DEBUG",
        "STEPUP_SBATCH_CACHE_TIMEOUT",
        "STEPUP_SBATCH_POLLING_INTERVAL",
        "STEPUP_SBATCH_TIME_MARGIN",
        "STEPUP_SBATCH_QUERY",
        "STEPUP_SBATCH_COMMAND_TIMEOUT",
        "STEPUP_SBATCH_SUBMIT_RETRIES",
        "STEPUP_SBATCH_SUBMIT_BACKOFF",
        "STEPUP_SBATCH_RET_TIMEOUT",
        "STEPUP_SBATCH_HOPELESS_GRACE",
        "STEPUP_QUEUE_CACHE_DIR",
        "XDG_CACHE_HOME",
    ]
    assert read(**dict.fromkeys(names, "")) == Config.from_environ(HOME)


def test_from_environ_reads_os_environ(monkeypatch):
    monkeypatch.setenv("STEPUP_SBATCH_CACHE_TIMEOUT", "7")
    monkeypatch.setenv("STEPUP_QUEUE_CACHE_DIR", "/scratch/cache")
    config = Config.from_environ()
    assert config.cache_timeout == 7.0
    assert config.cache_dir == Path("/scratch/cache")


@pytest.mark.parametrize(
    ("name", "attribute", "value", "expected"),
    [
        ("STEPUP_SBATCH_CACHE_TIMEOUT", "cache_timeout", "12.5", 12.5),
        ("STEPUP_SBATCH_CACHE_TIMEOUT", "cache_timeout", "0", 0.0),
        ("STEPUP_SBATCH_POLLING_INTERVAL", "polling_interval", "45", 45.0),
        ("STEPUP_SBATCH_TIME_MARGIN", "jitter", " 3 ", 3.0),
        ("STEPUP_SBATCH_TIME_MARGIN", "settle_time", " 3 ", 3.0),
        ("STEPUP_SBATCH_SETTLE_TIME", "settle_time", " 2 ", 2.0),
        ("STEPUP_SBATCH_COMMAND_TIMEOUT", "command_timeout", "1", 1.0),
        ("STEPUP_SBATCH_COMMAND_TIMEOUT", "command_timeout", "300", 300.0),
        ("STEPUP_SBATCH_SUBMIT_RETRIES", "submit_retries", "0", 0),
        ("STEPUP_SBATCH_SUBMIT_RETRIES", "submit_retries", "12", 12),
        ("STEPUP_SBATCH_SUBMIT_BACKOFF", "submit_backoff", "0.25", 0.25),
        ("STEPUP_SBATCH_RET_TIMEOUT", "ret_timeout", "600", 600.0),
        ("STEPUP_SBATCH_HOPELESS_GRACE", "hopeless_grace", "900", 900.0),
        ("STEPUP_SBATCH_QUERY", "query", "squeue", QueryMethod.SQUEUE),
        ("STEPUP_SBATCH_QUERY", "query", "scontrol", QueryMethod.SCONTROL),
        ("STEPUP_SBATCH_QUERY", "query", " SControl ", QueryMethod.SCONTROL),
        ("STEPUP_SBATCH_DEBUG", "debug", "yes", True),
        ("STEPUP_SBATCH_DEBUG", "debug", "TRUE", True),
        ("STEPUP_SBATCH_DEBUG", "debug", "1", True),
        ("STEPUP_SBATCH_DEBUG", "debug", "no", False),
        ("STEPUP_SBATCH_DEBUG", "debug", "false", False),
        ("STEPUP_SBATCH_DEBUG", "debug", "0", False),
        ("STEPUP_QUEUE_CACHE_DIR", "cache_dir", "/scratch/c", Path("/scratch/c")),
    ],
)
def test_each_variable(name, attribute, value, expected):
    config = read(**{name: value})
    assert getattr(config, attribute) == expected
    if attribute == "submit_retries":
        assert isinstance(config.submit_retries, int)


@pytest.mark.parametrize("value", ["on", "off", "maybe"])
def test_debug_refuses_what_the_error_message_does_not_offer(value):
    with pytest.raises(ConfigError, match="STEPUP_SBATCH_DEBUG") as excinfo:
        read(STEPUP_SBATCH_DEBUG=value)
    assert "on/off" not in str(excinfo.value)
    assert "yes/no" in str(excinfo.value)


def test_debug_sleep_range():
    config = read(
        STEPUP_SBATCH_DEBUG="yes",
        STEPUP_SBATCH_POLLING_INTERVAL="40",
        STEPUP_SBATCH_TIME_MARGIN="20",
    )
    assert config.sleep_range() == (1.0, 1.0)
    config = read(STEPUP_SBATCH_POLLING_INTERVAL="40", STEPUP_SBATCH_TIME_MARGIN="20")
    assert config.sleep_range() == (40.0, 60.0)


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("STEPUP_SBATCH_CACHE_TIMEOUT", "soon", "is not a number"),
        ("STEPUP_SBATCH_CACHE_TIMEOUT", "-1", "is too small"),
        ("STEPUP_SBATCH_POLLING_INTERVAL", "30s", "is not a number"),
        ("STEPUP_SBATCH_POLLING_INTERVAL", "-0.5", "is too small"),
        ("STEPUP_SBATCH_TIME_MARGIN", "-3", "is too small"),
        ("STEPUP_SBATCH_COMMAND_TIMEOUT", "0.5", "is too small"),
        ("STEPUP_SBATCH_COMMAND_TIMEOUT", "1 minute", "is not a number"),
        ("STEPUP_SBATCH_SUBMIT_RETRIES", "2.5", "is not a whole number"),
        ("STEPUP_SBATCH_SUBMIT_RETRIES", "-1", "is too small"),
        ("STEPUP_SBATCH_SUBMIT_BACKOFF", "x", "is not a number"),
        ("STEPUP_SBATCH_RET_TIMEOUT", "-60", "is too small"),
        ("STEPUP_SBATCH_HOPELESS_GRACE", "5 min", "is not a number"),
        ("STEPUP_SBATCH_QUERY", "sacct", "is not one of: squeue, scontrol"),
        ("STEPUP_SBATCH_DEBUG", "maybe", "is not a boolean"),
        ("STEPUP_QUEUE_ONCHANGE", "cancel", "is not one of: raise, resubmit, ignore"),
        ("STEPUP_QUEUE_RESUBMIT_CHANGED_INPUTS", "sometimes", "is not a boolean"),
    ],
)
def test_invalid_value(name, value, problem):
    with pytest.raises(ConfigError) as excinfo:
        read(**{name: value})
    message = str(excinfo.value)
    assert message.startswith(f"{name}={value!r} {problem}")


def test_invalid_number_message_tells_range_and_default():
    with pytest.raises(ConfigError) as excinfo:
        read(STEPUP_SBATCH_COMMAND_TIMEOUT="0.5")
    assert str(excinfo.value) == (
        "STEPUP_SBATCH_COMMAND_TIMEOUT='0.5' is too small. Set it to a number >= 1 or unset it "
        "(default 60)."
    )
    with pytest.raises(ConfigError) as excinfo:
        read(STEPUP_SBATCH_SUBMIT_RETRIES="many")
    assert str(excinfo.value) == (
        "STEPUP_SBATCH_SUBMIT_RETRIES='many' is not a whole number. Set it to a whole number "
        ">= 0 or unset it (default 5)."
    )


def test_config_error_is_a_value_error():
    # The sbatch action turns ValueErrors into a short message without traceback.
    assert issubclass(ConfigError, ValueError)


# onchange


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("raise", OnChange.RAISE),
        ("resubmit", OnChange.RESUBMIT),
        ("ignore", OnChange.IGNORE),
        ("Resubmit", OnChange.RESUBMIT),
    ],
)
def test_onchange(value, expected):
    config = read(STEPUP_QUEUE_ONCHANGE=value)
    assert config.onchange is expected
    assert config.onchange_source == "STEPUP_QUEUE_ONCHANGE"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("yes", OnChange.RESUBMIT), ("1", OnChange.RESUBMIT), ("no", OnChange.RAISE)],
)
def test_old_resubmit_variable(value, expected):
    config = read(STEPUP_QUEUE_RESUBMIT_CHANGED_INPUTS=value)
    assert config.onchange is expected
    assert config.onchange_source == "STEPUP_QUEUE_RESUBMIT_CHANGED_INPUTS"


@pytest.mark.parametrize(
    ("new", "old", "expected"),
    [
        ("raise", "yes", OnChange.RAISE),
        ("ignore", "yes", OnChange.IGNORE),
        ("resubmit", "no", OnChange.RESUBMIT),
    ],
)
def test_onchange_wins_over_old_variable(new, old, expected):
    config = read(STEPUP_QUEUE_ONCHANGE=new, STEPUP_QUEUE_RESUBMIT_CHANGED_INPUTS=old)
    assert config.onchange is expected
    assert config.onchange_source == "STEPUP_QUEUE_ONCHANGE"


def test_invalid_onchange_is_reported_even_with_valid_old_variable():
    with pytest.raises(ConfigError, match=r"^STEPUP_QUEUE_ONCHANGE='yes' is not one of"):
        read(STEPUP_QUEUE_ONCHANGE="yes", STEPUP_QUEUE_RESUBMIT_CHANGED_INPUTS="yes")


# cache folder


def test_xdg_cache_home():
    config = Config.from_environ({"HOME": "/home/alice", "XDG_CACHE_HOME": "/xdg"})
    assert config.cache_dir == Path("/xdg/stepup-queue")
    config = Config.from_environ({"XDG_CACHE_HOME": "/xdg"})
    assert config.cache_dir == Path("/xdg/stepup-queue")


def test_explicit_cache_dir_wins():
    config = Config.from_environ(
        {"HOME": "/home/alice", "XDG_CACHE_HOME": "/xdg", "STEPUP_QUEUE_CACHE_DIR": "/shared/c"}
    )
    assert config.cache_dir == Path("/shared/c")


@pytest.mark.parametrize("environ", [{}, {"HOME": "", "XDG_CACHE_HOME": ""}])
def test_no_home_no_xdg(environ):
    with pytest.raises(ConfigError) as excinfo:
        Config.from_environ(environ)
    message = str(excinfo.value)
    assert "HOME and XDG_CACHE_HOME are unset" in message
    assert "STEPUP_QUEUE_CACHE_DIR" in message


def test_no_home_no_xdg_but_explicit_cache_dir():
    config = Config.from_environ({"STEPUP_QUEUE_CACHE_DIR": "/tmp/sq-cache"})
    assert config.cache_dir == Path("/tmp/sq-cache")


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (None, (1.0, 1.5)),
        (0.0, (0.2, 0.3)),
        (2.0, (0.2, 0.3)),
        (10.0, (0.5, 0.75)),
        (20.0, (1.0, 1.5)),
        (3600.0, (1.0, 1.5)),
    ],
)
def test_sleep_range_looks_at_young_jobs_more_often(age, expected):
    config = read()
    low, high = config.sleep_range(age)
    assert low == pytest.approx(expected[0])
    assert high == pytest.approx(expected[1])


def test_debug_sleep_range_ignores_age():
    assert read(STEPUP_SBATCH_DEBUG="1").sleep_range(0.0) == (1.0, 1.0)


# What the original StepUp Queue 2.0.1 was seen to read, with its defaults (docs/migration.md).


@pytest.mark.parametrize(
    ("variables", "interval", "margin"),
    [
        ({"STEPUP_SBATCH_POLLING_MIN": "10"}, 10.0, 0.5),
        ({"STEPUP_SBATCH_POLLING_MAX": "20"}, 1.0, 19.0),
        ({"STEPUP_SBATCH_POLLING_MIN": "10", "STEPUP_SBATCH_POLLING_MAX": "20"}, 10.0, 10.0),
        # The new variables win.
        ({"STEPUP_SBATCH_POLLING_MIN": "10", "STEPUP_SBATCH_POLLING_INTERVAL": "3"}, 3.0, 0.5),
        ({"STEPUP_SBATCH_POLLING_MAX": "20", "STEPUP_SBATCH_TIME_MARGIN": "2"}, 1.0, 2.0),
    ],
)
def test_polling_variables_of_2x(variables, interval, margin):
    config = read(**variables)
    assert (config.polling_interval, config.jitter) == (interval, margin)
    assert config.sleep_range() == (interval, interval + margin)
    assert config.warnings == ()


def test_polling_max_below_min_is_refused():
    with pytest.raises(ConfigError, match="STEPUP_SBATCH_POLLING_MAX='5' is too small"):
        read(STEPUP_SBATCH_POLLING_MIN="10", STEPUP_SBATCH_POLLING_MAX="5")


def test_retry_variables_of_2x():
    config = read(STEPUP_SBATCH_RETRY_NUM="2", STEPUP_SBATCH_RETRY_DELAY_MIN="60")
    assert (config.submit_retries, config.submit_backoff) == (2, 60.0)
    assert read(STEPUP_SBATCH_RETRY_NUM="2", STEPUP_SBATCH_SUBMIT_RETRIES="7").submit_retries == 7
    with pytest.raises(ConfigError, match="STEPUP_SBATCH_RETRY_NUM='x' is not a whole number"):
        read(STEPUP_SBATCH_RETRY_NUM="x")


@pytest.mark.parametrize(
    "name",
    [
        "STEPUP_SBATCH_RETRY_DELAY_MAX",
        "STEPUP_SBATCH_UNLISTED_TIMEOUT",
        "STEPUP_SACCT_START_TIME",
        "STEPUP_SBATCH_CANCEL_TIMEOUT",
    ],
)
def test_variables_of_2x_without_equivalent_are_named_in_a_warning(name):
    (warning,) = read(**{name: "600"}).warnings
    assert warning.startswith(f"{name} (a variable of the original StepUp Queue 2.x) is ignored: ")
    assert warning.endswith("Unset it to silence this warning.")
    assert read(**{name: ""}).warnings == ()


def test_time_margin_and_settle_time_have_one_meaning_each():
    """STEPUP_SBATCH_TIME_MARGIN spreads the steps out; STEPUP_SBATCH_SETTLE_TIME, when set,
    alone says how long SLURM's answer about a new job is not trusted."""
    home = {"HOME": "/home/user"}
    environ = home | {"STEPUP_SBATCH_TIME_MARGIN": "4", "STEPUP_SBATCH_SETTLE_TIME": "1.5"}
    config = Config.from_environ(environ)
    assert (config.jitter, config.settle_time) == (4.0, 1.5)
    assert Config.from_environ(home | {"STEPUP_SBATCH_SETTLE_TIME": "2"}).jitter == 0.5
    assert Config(command_timeout=7).lock_timeout == 7
