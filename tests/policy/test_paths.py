"""`--path` parsing: defaults, every setting, and every refusal with the words it uses."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roam.errors import ConfigError
from roam.links.state import Billing, LinkKind
from roam.policy.paths import DEFAULT_PRIORITY, PathConfig, parse_paths


def test_only_dev_takes_the_defaults() -> None:
    path = PathConfig.parse("lan:dev=eth0")
    assert path == PathConfig(name="lan", device="eth0", priority=DEFAULT_PRIORITY,
                              kind=LinkKind.ETHERNET, billing=Billing.BYTE,
                              idle_switch=None, min_signal=None)


def test_every_setting() -> None:
    path = PathConfig.parse(
        "cell:dev=wwan0,priority=50,kind=cellular,billing=time,idle-switch=30,min-signal=-95"
    )
    assert path == PathConfig(name="cell", device="wwan0", priority=50,
                              kind=LinkKind.CELLULAR, billing=Billing.TIME,
                              idle_switch=30.0, min_signal=-95)


def test_settings_in_any_order_with_spaces_and_any_case_values() -> None:
    path = PathConfig.parse(" wifi : kind=WiFi , min-signal=20, dev=wlan0,priority=0 ")
    assert path == PathConfig(name="wifi", device="wlan0", priority=0, kind=LinkKind.WIFI,
                              min_signal=20)


def test_fractional_idle_switch() -> None:
    assert PathConfig.parse("sat:dev=sat0,billing=time,idle-switch=2.5").idle_switch == 2.5


@pytest.mark.parametrize(("text", "message"), [
    ("wifi", "expected NAME:dev=IFACE"),
    (":dev=wlan0", "the path needs a name before ':'"),
    ("wi fi:dev=wlan0", "a path name is letters, digits"),
    ("-wifi:dev=wlan0", "a path name is letters, digits"),
    ("wifi:priority=10", "missing dev=IFACE"),
    ("wifi:", "empty setting (a stray ',')"),
    ("wifi:dev=wlan0,", "empty setting (a stray ',')"),
    ("wifi:dev", "setting 'dev' needs a value (dev=...)"),
    ("wifi:dev=", "'dev' needs a value"),
    ("wifi:dev=wlan0,speed=3",
     "unknown setting 'speed' (known: billing, dev, idle-switch, kind, min-signal, priority, "
     "redundant, via)"),
    ("wifi:dev=wlan0,dev=wlan1", "'dev' is given twice"),
    ("wifi:dev=wlan0,priority=ten", "priority 'ten' is not a whole number"),
    ("wifi:dev=wlan0,priority=1.5", "priority '1.5' is not a whole number"),
    ("wifi:dev=wlan0,priority=-1", "priority -1 is negative (0 is the most preferred)"),
    ("wifi:dev=wlan0,kind=lte", "unknown kind 'lte' (known: ethernet|wifi|cellular|circuit)"),
    ("wifi:dev=wlan0,billing=free", "unknown billing 'free' (known: byte|time)"),
    ("c:dev=wwan0,billing=time,idle-switch=soon", "idle-switch 'soon' is not a number of seconds"),
    ("c:dev=wwan0,billing=time,idle-switch=-5", "idle-switch '-5' is not a number of seconds"),
    ("c:dev=wwan0,billing=time,idle-switch=inf", "idle-switch 'inf' is not a number of seconds"),
    ("c:dev=wwan0,billing=time,idle-switch=0", "idle-switch '0' is not a positive"),
    ("c:dev=wwan0,idle-switch=30", "idle-switch only applies to a path with billing=time"),
    ("wifi:dev=wlan0,min-signal=strong", "min-signal 'strong' is not a whole number"),
    ("wifi:dev=wlan0,min-signal=2.5", "min-signal '2.5' is not a whole number"),
    ("cell:dev=wwan0,redundant=off", "redundant 'off' is not yes or no"),
])
def test_refusals_name_the_flag_and_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        PathConfig.parse(text)
    assert str(info.value).startswith(f"--path {text!r}: ")
    assert message in str(info.value)


def test_unknown_setting_message_in_full() -> None:
    with pytest.raises(ConfigError) as info:
        PathConfig.parse("wifi:dev=wlan0,speed=3")
    assert str(info.value) == ("--path 'wifi:dev=wlan0,speed=3': unknown setting 'speed' "
                               "(known: billing, dev, idle-switch, kind, min-signal, priority, "
                               "redundant, via)")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": ""}, "a path name is letters"),
    ({"device": ""}, "dev '' is not a device name"),
    ({"device": "wlan 0"}, "dev 'wlan 0' is not a device name"),
    ({"priority": True}, "priority True is not a whole number"),
    ({"priority": 1.5}, "priority 1.5 is not a whole number"),
    ({"priority": -3}, "priority -3 is negative"),
    ({"kind": "wifi"}, "kind 'wifi' is not one of"),
    ({"billing": "time"}, "billing 'time' is not one of"),
    ({"billing": Billing.TIME, "idle_switch": float("nan")}, "idle-switch nan is not a positive"),
    ({"idle_switch": 30.0}, "idle-switch only applies to a path with billing=time"),
    ({"min_signal": 2.5}, "min-signal 2.5 is not a whole number"),
    ({"redundant": "no"}, "redundant 'no' is not yes or no"),
])
def test_direct_construction_is_checked_too(kwargs: dict[str, object], message: str) -> None:
    # Settings from a TOML file reach the dataclass without going through parse.
    fields: dict[str, object] = {"name": "p", "device": "eth0", **kwargs}
    with pytest.raises(ConfigError) as info:
        PathConfig(**fields)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_parse_paths_keeps_the_order_given() -> None:
    paths = parse_paths(["wifi:dev=wlan0,priority=10", "cell:dev=wwan0", "lan:dev=eth0"])
    assert [p.name for p in paths] == ["wifi", "cell", "lan"]
    assert parse_paths([]) == []


def test_parse_paths_refuses_a_name_twice() -> None:
    with pytest.raises(ConfigError) as info:
        parse_paths(["wifi:dev=wlan0", "cell:dev=wwan0", "wifi:dev=wlan1"])
    assert str(info.value) == ("--path 'wifi:dev=wlan1': a path named 'wifi' is already "
                               "configured")


def test_a_path_may_refuse_redundant_copies() -> None:
    assert PathConfig.parse("wifi:dev=wlan0").redundant
    assert PathConfig.parse("wifi:dev=wlan0,redundant=yes").redundant
    assert not PathConfig.parse("cell:dev=wwan0,billing=byte,redundant=No").redundant


def test_two_paths_may_share_a_device() -> None:
    # Two names on one device differ in what they are for (priority, thresholds).
    paths = parse_paths(["a:dev=eth0,priority=1", "b:dev=eth0,priority=2"])
    assert [p.device for p in paths] == ["eth0", "eth0"]


@st.composite
def _configs(draw: st.DrawFn) -> PathConfig:
    billing = draw(st.sampled_from(Billing))
    return PathConfig(
        name=draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,10}", fullmatch=True)),
        device=draw(st.from_regex(r"[a-z][a-z0-9.@-]{0,14}", fullmatch=True)),
        priority=draw(st.integers(0, 10_000)),
        kind=draw(st.sampled_from(LinkKind)),
        billing=billing,
        idle_switch=(draw(st.none() | st.integers(1, 3600).map(float))
                     if billing is Billing.TIME else None),
        min_signal=draw(st.none() | st.integers(-120, 100)),
        redundant=draw(st.booleans()),
    )


@given(_configs(), st.randoms())
def test_round_trip(path: PathConfig, rnd: random.Random) -> None:
    items = [f"dev={path.device}", f"priority={path.priority}", f"kind={path.kind.value}",
             f"billing={path.billing.value}"]
    if path.idle_switch is not None:
        items.append(f"idle-switch={path.idle_switch}")
    if path.min_signal is not None:
        items.append(f"min-signal={path.min_signal}")
    if not path.redundant or rnd.random() < 0.5:
        items.append(f"redundant={'yes' if path.redundant else 'no'}")
    rnd.shuffle(items)
    assert PathConfig.parse(f"{path.name}:{','.join(items)}") == path


@given(st.text(max_size=60) | st.text(alphabet="wifi:dev=lan0,priority=1kndbgsm-. ", max_size=60))
def test_parse_raises_only_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        PathConfig.parse(text)


def test_a_path_through_relays_names_them_in_route_order() -> None:
    path = PathConfig.parse("wifi-relayed:dev=wlan0,priority=20,via=dmz+core")
    assert path.via == ("dmz", "core")
    assert PathConfig.parse("wifi:dev=wlan0").via == ()
    with pytest.raises(ConfigError, match=r"via \('dmz', ''\) is not relay names joined by"):
        PathConfig.parse("w:dev=wlan0,via=dmz+")
