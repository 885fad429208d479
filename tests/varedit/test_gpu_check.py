"""benchmarks/gpu_check.sh on the CPU (tiny configs): the report's shape, and every section passed or
was skipped for a stated reason, so the GPU check does not rot between GPU runs."""

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]


@pytest.mark.slow
def test_gpu_check_on_cpu_passes_or_skips_every_section(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--device", "cpu", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert (report["schema_version"], report["device"], report["sizes"]) == (1, "cpu", "tiny")
    sections = report["sections"]
    assert list(sections) == [
        "environment",
        "gpu_tests",
        "e2e",
        "model:tiny",
        "model:tiny-patchify",
        "compile",
    ]
    for name, rec in sections.items():
        assert rec["status"] in ("passed", "skipped"), (name, rec)
        assert rec["seconds"] <= rec["budget_s"] + 20  # the orchestrator's backstop: budget + 15 s
        if rec["status"] == "skipped":
            assert rec["reason"], name
    assert sections["gpu_tests"]["status"] == sections["compile"]["status"] == "skipped"
    assert report["summary"] == {"passed": 4, "failed": 0, "skipped": 2}

    env = sections["environment"]["result"]
    assert env["torch"] and env["cuda_available"] in (True, False)
    e2e = sections["e2e"]["result"]
    assert (e2e["job_status"], e2e["result_size"], e2e["device"]) == ("succeeded", [48, 40], "cpu")
    for name in ("model:tiny", "model:tiny-patchify"):
        r = sections[name]["result"]
        assert (
            r["load"]["total_s"] > 0
            and r["file_gib"] > 0
            and r["scales"] == len(r["batches"]["1"]["per_scale_best_s"])
        )
        one = r["batches"]["1"]
        assert one["status"] == "measured" and one["edits_per_s"] > 0 and one["peak_gpu_gib"] is None
        stages = one["stages_best_s"]
        assert {
            "until_scale_1_s",
            "scales_2_to_K_s",
            "decode_post_s",
            "text_encode_s",
            "vae_encode_s",
        } <= set(stages)
        for batch in ("4", "8"):  # measured, or left out for the section's budget on a slow machine
            assert r["batches"][batch]["status"] in ("measured", "skipped"), r["batches"][batch]
    assert "report:" in proc.stdout and "environment" in proc.stdout
