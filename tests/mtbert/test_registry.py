import pytest

from mtbert.registry import Registry


def test_register_and_get():
    reg = Registry("grad.method")
    reg.register("sum")(len)
    reg.register("pcgrad")(max)
    assert reg.get("sum") is len and list(reg) == ["pcgrad", "sum"] and "pcgrad" in reg


def test_unknown_name_lists_choices():
    reg = Registry("grad.method")
    for name in ("sum", "pcgrad", "pcgrad_weighted"):
        reg.register(name)(object())
    with pytest.raises(ValueError, match=r"unknown grad.method 'pcgard' \(did you mean 'pcgrad'\?\); "
                                         r"choose from: pcgrad, pcgrad_weighted, sum"):
        reg.get("pcgard")


def test_duplicate_registration_fails():
    reg = Registry("heads.sst")
    reg.register("linear")(object())
    with pytest.raises(ValueError, match="heads.sst 'linear' is registered twice"):
        reg.register("linear")(object())
