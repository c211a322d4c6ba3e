from pathlib import Path

from arlm.bench import machine
from arlm.bench.machine import cpu_model

XEON = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 amx_tile

processor\t: 1
model name\t: another
"""


def test_cpu_model_is_the_model_name_line_of_cpuinfo():
    name = cpu_model()
    assert name.strip() and "\n" not in name
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and "model name" in cpuinfo.read_text():
        names = [line.split(":", 1)[1] for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        assert name.startswith(names[0].strip())


def test_cpu_model_names_the_family_model_and_vector_instructions(tmp_path, monkeypatch):
    """A VM's bare "Intel(R) Xeon(R) Processor" gains what tells machines apart: the first processor's family and
    model numbers and its widest vector instructions; AVX2 alone where there is no AVX-512."""
    fake = tmp_path / "cpuinfo"
    monkeypatch.setattr(machine, "Path", lambda _: fake)
    fake.write_text(XEON)
    assert cpu_model() == "Intel(R) Xeon(R) Processor (family 6, model 143; AVX-512, VNNI, BF16, AMX)"
    avx2 = XEON.replace("avx512f avx512_vnni avx512_bf16 amx_tile", "fma")
    fake.write_text(avx2)
    assert cpu_model() == "Intel(R) Xeon(R) Processor (family 6, model 143; AVX2)"
    fake.write_text(avx2.replace("model name", "model  name"))  # no model name line: platform's name
    assert cpu_model() and "family" not in cpu_model()
    fake.write_text(XEON.replace("avx2 avx512f avx512_vnni avx512_bf16 amx_tile", "sse2"))
    assert cpu_model() == "Intel(R) Xeon(R) Processor (family 6, model 143)"
