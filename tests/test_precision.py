"""Mixed precision of training: which dtype each setting gives on which device and CPU."""

from __future__ import annotations

import pytest
import torch

from spinepipe import devices
from spinepipe.devices import autocast_dtype, cpu_has_native_bf16, precision_name

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(("text", "native"), [
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n", True),
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 amx_bf16 amx_tile\n", True),
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n", False),  # bf16 emulated
    ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", True),  # Arm
    ("processor\t: 0\nFeatures\t: fp asimd\n", False),
    ("", False),
])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, text, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    assert cpu_has_native_bf16(cpuinfo) is native


def test_no_cpuinfo_means_no_native_bf16(tmp_path):
    assert cpu_has_native_bf16(tmp_path / "absent") is False


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, None)])
def test_auto_on_cpu_is_bf16_only_where_native(monkeypatch, native, expected):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    assert autocast_dtype(CPU, "auto", "train.precision") is expected


def test_auto_on_gpu_is_fp16_and_explicit_settings_win(monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert autocast_dtype(CUDA, "auto", "train.precision") is torch.float16
    assert autocast_dtype(CPU, "fp32", "train.precision") is None
    assert autocast_dtype(CUDA, "fp32", "train.precision") is None
    assert autocast_dtype(CUDA, "bf16", "train.precision") is torch.bfloat16


def test_bf16_on_a_cpu_without_it_warns(monkeypatch, caplog):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert autocast_dtype(CPU, "bf16", "localize.precision") is torch.bfloat16
    assert "localize.precision" in caplog.text and "emulated" in caplog.text


def test_an_unknown_precision_names_the_setting():
    with pytest.raises(ValueError, match="train.precision.*fp8"):
        autocast_dtype(CPU, "fp8", "train.precision")


def test_precision_names():
    assert [precision_name(d) for d in (None, torch.bfloat16, torch.float16)] == ["fp32", "bf16", "fp16"]
