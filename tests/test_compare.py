"""`lowlight-compile compare A B`: latency and fidelity side by side."""
from __future__ import annotations

import json
from pathlib import Path


def test_compare_fp32_and_int8(fp32_bundle, int8_bundle, capsys, tmp_path: Path) -> None:
    from lowlight.compile.cli import main

    a, b = str(fp32_bundle.bundle), str(int8_bundle.bundle)
    assert main(["compare", a, b, "--json"]) == 0
    c = json.loads(capsys.readouterr().out)
    rows = {r["key"]: r for r in c["rows"]}
    assert rows["precision"]["a"] == "fp32" and rows["precision"]["b"] == "int8"
    va, vb = json.loads((fp32_bundle.bundle / "verification.json").read_text()), json.loads((int8_bundle.bundle / "verification.json").read_text())
    assert rows["fidelity_psnr_db"]["a"] == va["fidelity_psnr_db"] and rows["fidelity_psnr_db"]["b"] == vb["fidelity_psnr_db"]
    assert rows["fidelity_psnr_db"]["delta"] == vb["fidelity_psnr_db"] - va["fidelity_psnr_db"]
    assert rows["fidelity_psnr_db"]["better"] == "a"  # FP32 is the reference: INT8 cannot be closer to it
    assert rows["model_mb"]["better"] == "b" and rows["model_mb"]["ratio"] < 0.8  # INT8 weights are smaller
    assert rows["median"]["ratio"] == rows["median"]["b"] / rows["median"]["a"]
    assert rows["p99"]["a"] is None  # 3 profile runs cannot support a p99
    out = tmp_path / "cmp.md"
    assert main(["compare", a, b, "--out", str(out)]) == 0
    md = out.read_text()
    assert md.startswith("# Compare") and "| fidelity worst sample (dB) |" in md
    assert main(["compare", a, b, "--out", str(out)]) == 0  # its own file may be replaced
    mine = tmp_path / "notes.md"
    mine.write_text("my notes\n")
    assert main(["compare", a, b, "--out", str(mine)]) == 2 and mine.read_text() == "my notes\n"
    assert main(["compare", a, str(tmp_path)]) == 2
    assert "is not a bundle" in capsys.readouterr().err
