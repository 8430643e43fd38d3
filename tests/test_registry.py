"""Backbone registry."""

import pytest

from tfface.models import registry


def test_list_and_default_head():
    names = registry.list_backbones()
    for name in ("mobilefacenet", "mbf", "mbf_large", "iresnet18", "iresnet34", "iresnet50", "iresnet100",
                 "iresnet200", "inception_resnet_v1", "sphere20", "sphere36", "sphere64", "nn4_small2"):
        assert name in names
    assert registry.default_head("mobilefacenet") == "gdc"
    assert registry.default_head("iresnet50") == "fc"
    assert registry.default_head("inception_resnet_v1") == "gap"
    assert registry.default_input_size("sphere20") == (112, 96)
    assert registry.default_input_size("inception_resnet_v1") == (160, 160)
    assert registry.default_input_size("nn4_small2") == (96, 96)


def test_build_backbone_passes_kwargs():
    model = registry.build_backbone("mobilefacenet", (32, 32, 3), width_multiplier=0.25, activation="relu")
    assert model.output_shape == (None, 2, 2, 128)


def test_unknown_name_lists_available():
    with pytest.raises(ValueError, match="available: .*mobilefacenet"):
        registry.build_backbone("resnet9000", (112, 112, 3))
    with pytest.raises(ValueError, match="mobilefacenet"):
        registry.default_head("nope")


def test_register_backbone(monkeypatch):
    monkeypatch.setattr(registry, "BACKBONES", dict(registry.BACKBONES))
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))
    registry.register_backbone("toy", lambda input_shape: input_shape)
    assert registry.build_backbone("toy", [8, 8, 3]) == (8, 8, 3)
    assert registry.default_head("toy") == "fc"
    assert registry.default_input_size("toy") == (112, 112)
    assert registry.backbone_spec("toy").options == ()
    with pytest.raises(ValueError, match="already"):
        registry.register_backbone("toy", lambda input_shape: None)
