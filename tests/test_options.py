"""Per-probe options: ``parse_options`` (jsonargparse's validation plus the command line's forms), its
one-line errors, the range checks of the options dataclasses, and its memo of validated option sets."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from clipprobe.errors import UserError
from clipprobe.probes.common import OPTIONS, check_option, parse_options
from clipprobe.probes.image import AttentionOptions, I2torOptions, IocOptions, IorOptions
from clipprobe.probes.matching import ItmOptions
from clipprobe.probes.text import MitigationOptions, SizeClaimOptions, TocOptions, TorOptions

TOR_VALID = "mode, template, n, max_captions, num_captions, orders, hits, seed"


def _parse(probe: str, options: dict[str, Any] | None) -> Any:
    return parse_options(OPTIONS[probe], options, probe)


def test_every_probe_registers_its_options_and_defaults_parse() -> None:
    assert {
        "tor": TorOptions, "mitigation": MitigationOptions, "size_claim": SizeClaimOptions, "toc": TocOptions,
        "ior": IorOptions, "i2tor": I2torOptions, "ioc": IocOptions, "attention": AttentionOptions, "itm": ItmOptions,
    }.items() <= OPTIONS.items()  # fmt: skip
    for probe, cls in OPTIONS.items():
        assert _parse(probe, {}) == cls() == _parse(probe, None)


@pytest.mark.parametrize(
    ("probe", "options", "expected"),
    [
        # lists: YAML lists, comma strings (spaces allowed), one item, tuples, integral floats
        ("tor", {"n": [2, 3]}, {"n": [2, 3]}),
        ("tor", {"n": "2,3"}, {"n": [2, 3]}),
        ("tor", {"n": "2, 3"}, {"n": [2, 3]}),
        ("tor", {"n": 3}, {"n": [3]}),
        ("tor", {"n": "3"}, {"n": [3]}),
        ("tor", {"n": (2, 3)}, {"n": [2, 3]}),
        ("tor", {"n": [2.0, "3"]}, {"n": [2, 3]}),
        ("toc", {"split": "0.7,0.1,0.2"}, {"split": [0.7, 0.1, 0.2]}),
        ("toc", {"split": [0.8, 0, 0.2]}, {"split": [0.8, 0.0, 0.2]}),
        ("size_claim", {"large": "dining table, cup"}, {"large": ["dining table", "cup"]}),
        ("size_claim", {"large": "yes,no"}, {"large": ["yes", "no"]}),  # list[str] items stay strings
        ("size_claim", {"large": "a"}, {"large": ["a"]}),
        # null: None, "null", "none" in any case, for optional options
        ("tor", {"n": None}, {"n": None}),
        ("tor", {"n": "null"}, {"n": None}),
        ("tor", {"max_captions": "None"}, {"max_captions": None}),
        ("tor", {"max_captions": "NULL"}, {"max_captions": None}),
        ("itm", {"seed": "none"}, {"seed": None}),
        ("tor", {"max_captions": 0}, {"max_captions": 0}),
        # ints: strings, integral floats, signs and underscores
        ("tor", {"num_captions": "50"}, {"num_captions": 50}),
        ("tor", {"num_captions": " 7 "}, {"num_captions": 7}),
        ("tor", {"num_captions": 50.0}, {"num_captions": 50}),
        ("tor", {"num_captions": "1_000"}, {"num_captions": 1000}),
        ("tor", {"seed": "-1"}, {"seed": -1}),
        ("tor", {"seed": 7.0}, {"seed": 7}),
        ("itm", {"absent": 0}, {"absent": 0}),
        # floats: strings, exponents, ints
        ("toc", {"lr": "1e-2"}, {"lr": 0.01}),
        ("toc", {"lr": 1}, {"lr": 1.0}),
        ("ioc", {"test_fraction": "0.3"}, {"test_fraction": 0.3}),
        # bools: true/false, yes/no, on/off, 1/0 in any case
        ("mitigation", {"itm": False}, {"itm": False}),
        ("mitigation", {"itm": "false"}, {"itm": False}),
        ("mitigation", {"itm": "TRUE"}, {"itm": True}),
        ("mitigation", {"itm": "Yes"}, {"itm": True}),
        ("mitigation", {"itm": "off"}, {"itm": False}),
        ("mitigation", {"itm": "1"}, {"itm": True}),
        ("mitigation", {"itm": "0"}, {"itm": False}),
        # choices
        ("tor", {"mode": "paper", "orders": "all"}, {"mode": "paper", "orders": "all"}),
        ("toc", {"template": "bare"}, {"template": "bare"}),
        ("i2tor", {"template": "long"}, {"template": "long"}),
        ("size_claim", {"design": "swap"}, {"design": "swap"}),
        # names with - for _, inherited options
        ("tor", {"num-captions": "5", "max-captions": "null"}, {"num_captions": 5, "max_captions": None}),
        ("mitigation", {"mode": "paper", "absent": "3"}, {"mode": "paper", "absent": 3}),
        ("attention", {"batch_size": "4"}, {"batch_size": 4}),
    ],
)
def test_accepted_forms(probe: str, options: dict[str, Any], expected: dict[str, Any]) -> None:
    opts = _parse(probe, options)
    assert {k: getattr(opts, k) for k in expected} == expected
    for k, v in expected.items():
        assert type(getattr(opts, k)) is type(v)  # 50, not 50.0 or "50"; [1.0, ...], not [1, ...]
    untouched = {f.name for f in dataclasses.fields(opts)} - set(expected)
    defaults = OPTIONS[probe]()
    assert all(getattr(opts, k) == getattr(defaults, k) for k in untouched)


@pytest.mark.parametrize(
    ("probe", "options", "message"),
    [
        # unknown options: the first one given, with the valid ones
        ("tor", {"nope": 1}, f"unknown option 'nope' for probe tor; valid options: {TOR_VALID}"),
        ("tor", {"n": 2, "nope": 1, "abc": 2}, f"unknown option 'nope' for probe tor; valid options: {TOR_VALID}"),
        ("tor", {"num-captionz": 1}, f"unknown option 'num-captionz' for probe tor; valid options: {TOR_VALID}"),
        ("ior", {"x": 1}, "unknown option 'x' for probe ior; valid options: (none)"),
        ("itm", {1: 2}, "unknown option 1 for probe itm; valid options: template, absent, seed"),
        # choices
        ("tor", {"mode": "fancy"}, "tor.mode='fancy' is not one of paper, balanced"),
        ("tor", {"mode": "Paper"}, "tor.mode='Paper' is not one of paper, balanced"),
        ("tor", {"mode": 1}, "tor.mode=1 is not one of paper, balanced"),
        ("tor", {"mode": ["paper"]}, "tor.mode=['paper'] is not one of paper, balanced"),
        ("tor", {"template": "poem"}, "tor.template='poem' is not one of bare, article, a, long"),
        ("tor", {"template": None}, "tor.template=None is not one of bare, article, a, long"),
        ("mitigation", {"orders": "some"}, "mitigation.orders='some' is not one of random, all"),
        # lists
        ("tor", {"n": "two"}, "tor.n='two' is not a valid list[int] | None"),
        ("tor", {"n": "2,x"}, "tor.n='2,x' is not a valid list[int] | None"),
        ("tor", {"n": "2,,3"}, "tor.n='2,,3' is not a valid list[int] | None"),
        ("tor", {"n": ""}, "tor.n='' is not a valid list[int] | None"),
        ("tor", {"n": "[2,3]"}, "tor.n='[2,3]' is not a valid list[int] | None"),
        ("tor", {"n": [2.5]}, "tor.n=[2.5] is not a valid list[int] | None"),
        ("tor", {"n": [True]}, "tor.n=[True] is not a valid list[int] | None"),
        ("tor", {"n": [None]}, "tor.n=[None] is not a valid list[int] | None"),
        ("tor", {"n": {"a": 1}}, "tor.n={'a': 1} is not a valid list[int] | None"),
        ("size_claim", {"large": [1, 2]}, "size_claim.large=[1, 2] is not a valid list[str]"),
        ("size_claim", {"large": None}, "size_claim.large=None is not a valid list[str]"),
        ("toc", {"split": "0.7,0.1,x"}, "toc.split='0.7,0.1,x' is not a valid list[float]"),
        # in range: checked before any model is built (each would fail late or measure nothing)
        (
            "toc",
            {"split": [1, 0, 0]},
            "toc.split=[1.0, 0.0, 0.0] is out of range; must be three fractions (train, val, "
            "test), train and test above 0, summing to at most 1",
        ),
        ("toc", {"n": 1}, "toc.n=1 is out of range; must be at least 2"),
        ("toc", {"positions": [5]}, "toc.positions=[5] is out of range; must be within 1..n=4"),
        ("tor", {"n": [1, 3]}, "tor.n=[1, 3] is out of range; must be object counts of at least 2"),
        ("size_claim", {"n": []}, "size_claim.n=[] is out of range; must be object counts of at least 2"),
        ("size_claim", {"num_captions": 0}, "size_claim.num_captions=0 is out of range; must be at least 1"),
        # ints: not integral, not a number, bools, null where not optional
        ("tor", {"num_captions": 1.5}, "tor.num_captions=1.5 is not a valid int"),
        ("tor", {"num_captions": "1.5"}, "tor.num_captions='1.5' is not a valid int"),
        ("tor", {"num_captions": "50.0"}, "tor.num_captions='50.0' is not a valid int"),
        ("tor", {"num_captions": "1e3"}, "tor.num_captions='1e3' is not a valid int"),
        ("tor", {"num_captions": "abc"}, "tor.num_captions='abc' is not a valid int"),
        ("tor", {"num_captions": True}, "tor.num_captions=True is not a valid int"),
        ("tor", {"num_captions": None}, "tor.num_captions=None is not a valid int"),
        ("tor", {"num_captions": "null"}, "tor.num_captions='null' is not a valid int"),
        ("tor", {"num_captions": [5]}, "tor.num_captions=[5] is not a valid int"),
        ("tor", {"max_captions": "x"}, "tor.max_captions='x' is not a valid int | None"),
        ("tor", {"max_captions": 2.5}, "tor.max_captions=2.5 is not a valid int | None"),
        ("tor", {"seed": "7.0"}, "tor.seed='7.0' is not a valid int | None"),
        ("toc", {"n": True}, "toc.n=True is not a valid int"),
        ("toc", {"n": "true"}, "toc.n='true' is not a valid int"),
        ("toc", {"epochs": "many"}, "toc.epochs='many' is not a valid int"),
        ("itm", {"absent": "some"}, "itm.absent='some' is not a valid int"),
        # floats
        ("toc", {"lr": "fast"}, "toc.lr='fast' is not a valid float"),
        ("toc", {"lr": True}, "toc.lr=True is not a valid float"),
        ("toc", {"split": [True]}, "toc.split=[True] is not a valid list[float]"),
        # bools
        ("mitigation", {"itm": 1}, "mitigation.itm=1 is not a valid bool"),
        ("mitigation", {"itm": 0.0}, "mitigation.itm=0.0 is not a valid bool"),
        ("mitigation", {"itm": "maybe"}, "mitigation.itm='maybe' is not a valid bool"),
        ("mitigation", {"itm": "y"}, "mitigation.itm='y' is not a valid bool"),
        ("mitigation", {"itm": None}, "mitigation.itm=None is not a valid bool"),
        # the value as given (here with -), not as rewritten for jsonargparse
        ("tor", {"num-captions": "many"}, "tor.num-captions='many' is not a valid int"),
    ],
)
def test_rejected_forms_in_one_line(probe: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError) as e:
        _parse(probe, options)
    assert str(e.value) == message


@pytest.mark.parametrize(
    ("probe", "options", "message"),
    [
        ("tor", {"num_captions": 0}, "tor.num_captions=0 is out of range; must be at least 1"),
        ("tor", {"num_captions": "-5"}, "tor.num_captions=-5 is out of range; must be at least 1"),
        ("mitigation", {"num_captions": -5}, "mitigation.num_captions=-5 is out of range; must be at least 1"),
        ("toc", {"per_label": 0}, "toc.per_label=0 is out of range; must be at least 1"),
        ("toc", {"batch_size": -4}, "toc.batch_size=-4 is out of range; must be at least 1"),
        ("toc", {"epochs": 0}, "toc.epochs=0 is out of range; must be at least 1"),
        ("toc", {"lr": 0}, "toc.lr=0.0 is out of range; must be greater than 0"),
        ("toc", {"lr": "-1e-3"}, "toc.lr=-0.001 is out of range; must be greater than 0"),
        ("ioc", {"test_fraction": 0}, "ioc.test_fraction=0.0 is out of range; must be between 0 and 1 (exclusive)"),
        ("ioc", {"test_fraction": 1}, "ioc.test_fraction=1.0 is out of range; must be between 0 and 1 (exclusive)"),
        ("ioc", {"batch_size": 0}, "ioc.batch_size=0 is out of range; must be at least 1"),
        ("ioc", {"epochs": -1}, "ioc.epochs=-1 is out of range; must be at least 1"),
        ("ioc", {"lr": -0.1}, "ioc.lr=-0.1 is out of range; must be greater than 0"),
        ("attention", {"batch_size": 0}, "attention.batch_size=0 is out of range; must be at least 1"),
    ],
)
def test_values_out_of_range(probe: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError) as e:
        _parse(probe, options)
    assert str(e.value) == message


def test_range_checks_hold_without_parse_options_and_keep_the_edges() -> None:
    with pytest.raises(UserError, match=r"^tor\.num_captions=0 "):
        TorOptions(num_captions=0)
    with pytest.raises(UserError, match=r"^mitigation\.num_captions=0 "):
        MitigationOptions(num_captions=0)
    assert TorOptions(num_captions=1).num_captions == 1
    assert IocOptions(test_fraction=0.999, batch_size=1, epochs=1, lr=1e-9).test_fraction == 0.999
    assert TocOptions(per_label=1, batch_size=1, epochs=1).per_label == 1


def test_check_option_names_an_unregistered_class_by_its_name() -> None:
    @dataclasses.dataclass
    class Loose:
        k: int = -1

    with pytest.raises(UserError, match=r"^Loose\.k=-1 is out of range; must be at least 0$"):
        check_option(Loose(), "k", False, "at least 0")
    check_option(Loose(), "k", True, "at least 0")


def test_caller_options_are_not_changed_and_results_share_no_lists() -> None:
    options = {"n": ["2", 3.0], "split": ["0.5", "0.25", "0.25"]}
    given = {"n": ["2", 3.0], "split": ["0.5", "0.25", "0.25"]}
    with pytest.raises(UserError):
        _parse("toc", options)  # toc.n is an int: rejected, and jsonargparse has seen the lists
    assert options == given
    first = _parse("tor", {"n": options["n"]})
    assert options == given and first.n == [2, 3]
    first.n.append(9)  # a probe changing its options must not change the next call's
    again = _parse("tor", {"n": options["n"]})
    assert again.n == [2, 3] and again is not first


def test_repeated_calls_give_equal_options_and_errors() -> None:
    options = {"n": "2,3", "num_captions": "50", "template": "article"}
    assert (
        _parse("tor", options)
        == _parse("tor", dict(options))
        == TorOptions(n=[2, 3], num_captions=50, template="article")
    )
    for _ in range(2):  # a rejected set is not remembered as valid
        with pytest.raises(UserError, match="tor.num_captions=0"):
            _parse("tor", {"num_captions": 0})
    assert _parse("tor", {"num_captions": 1.0}).num_captions == 1  # 1.0 and 1 differ in repr: checked apart
    assert _parse("tor", {"num_captions": 1}).num_captions == 1


def test_same_option_sets_for_different_classes_are_told_apart() -> None:
    assert _parse("itm", {"absent": "3"}).absent == 3
    assert _parse("mitigation", {"absent": "3"}).absent == 3
    with pytest.raises(UserError, match="unknown option 'absent' for probe tor"):
        _parse("tor", {"absent": "3"})
