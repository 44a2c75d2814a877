"""The dense bf16 peaks behind MFU when train.peak_tflops is 0, matched on the names torch.cuda.get_device_name gives."""
import pytest
import torch

from l2m_train.train.peak_flops import dense_bf16_tflops, device_peak_flops


@pytest.mark.parametrize("name,tflops", [
    ("NVIDIA H200", 989), ("NVIDIA H200 NVL", 835), ("NVIDIA GH200 480GB", 989),
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835),
    ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100 80GB PCIe", 312),
    ("NVIDIA L40S", 362), ("NVIDIA L40", 181), ("NVIDIA L4", 121), ("NVIDIA B200", 2250),
    ("Tesla V100-SXM2-16GB", None), ("NVIDIA GeForce RTX 4090", None),  # no bf16 / not a datacentre part: no MFU
])
def test_a_gpu_name_finds_its_dense_bf16_peak(name, tflops):
    assert dense_bf16_tflops(name) == tflops


def test_a_cpu_has_no_peak():
    assert device_peak_flops(torch.device("cpu")) is None
