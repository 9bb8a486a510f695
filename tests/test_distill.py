"""The distill stage (compile/distill.py) on a toy conditional diffusion, then DarkDiff's trainer and `distill` CLI.

The toy: 2-D data whose clean sample given a condition c is one of two points,
x = 0.7 c +- 0.6 u (u fixed), so a single DDIM step from noise lands between
the modes (on their mean) while a many-step sampler picks one. A tiny MLP
velocity net (v-prediction, cosine schedule, the unconditional branch trained
on a pure-noise condition as DarkDiff's) is the teacher, sampled with
classifier-free guidance w = 2. Measured on this machine (see the asserts):
the K = 1 student lands ~0.2 from the 64-step guided teacher's output with
the same z_T and ~0.14 from the data, the teacher's own 1-step DDIM ~0.76 and
~0.55.
"""
from __future__ import annotations

import json

import copy
import math
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from torch import Tensor, nn

from lowlight.compile.distill import (
    ddim, distill, distill_cached, distill_key, check_steps, state_sha256, Sampler,
)
from lowlight.core.errors import LowlightError

U = torch.tensor([0.8, -0.6])


def truth(c: Tensor, sign: Tensor) -> Tensor:
    return 0.7 * c + 0.6 * sign[:, None] * U


def manifold_error(c: Tensor, x: Tensor) -> float:
    """Mean distance of samples to the nearer of the two true points of their condition."""
    base = 0.7 * c
    return torch.minimum((x - base - 0.6 * U).norm(dim=1), (x - base + 0.6 * U).norm(dim=1)).mean().item()


class Net(nn.Module):
    """v(z, t, c): a 3-layer MLP with a sinusoidal time embedding; counts its forward passes."""

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Linear(12, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                               nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2))
        self.calls = 0

    def forward(self, z: Tensor, t: Tensor, c: Tensor) -> Tensor:
        self.calls += 1
        fr = 3 * 2 ** torch.arange(4, dtype=z.dtype)
        emb = torch.cat([torch.sin(t[:, None] * fr), torch.cos(t[:, None] * fr)], 1)
        return self.f(torch.cat([z, c, emb], 1))


class Toy(nn.Module):
    """The Sampler protocol over `Net`: CFG teacher (two passes) or a one-pass student."""

    def __init__(self) -> None:
        super().__init__()
        self.net, self.guidance = Net(), 2.0
        self.student_steps: int | None = None

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        tt = (t + 0.008) / 1.008
        return torch.cos(math.pi / 2 * tt), torch.sin(math.pi / 2 * tt)

    def condition(self, c: Tensor, **_: Tensor) -> dict[str, Tensor]:
        # the unconditional condition at inference: a fixed Gaussian (DarkDiff: drawn after z_T)
        return {"c": c, "null": torch.randn(c.shape, generator=torch.Generator().manual_seed(1))}

    def velocity(self, z: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        vc = self.net(z, t, cond["c"])
        if self.student_steps is not None:
            return vc
        vu = self.net(z, t, cond["null"])
        return vu + self.guidance * (vc - vu)

    def clean_latent(self, x0: Tensor, **_: Tensor) -> Tensor:
        return x0

    def latent_shape(self, c: Tensor, **_: Tensor) -> tuple[int, ...]:
        return (c.shape[0], 2)

    def make_student(self, steps: int) -> "Toy":
        s = copy.deepcopy(self)
        s.student_steps = steps
        return s

    def trained_modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}


def batches(n: int = 256, seed: int = 0) -> Iterator[dict[str, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    while True:
        c = torch.rand(n, 2, generator=g) * 2 - 1
        sign = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
        yield {"c": c, "x0": truth(c, sign)}


def train_teacher(iters: int = 1000, lr: float = 1e-2, seed: int = 0) -> Toy:
    """v-prediction with the condition replaced by pure noise 15 % of the time (CFG)."""
    torch.manual_seed(seed)
    m = Toy()
    opt = torch.optim.Adam(m.net.parameters(), lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / iters)
    it, g = batches(seed=seed + 100), torch.Generator().manual_seed(seed)
    for _ in range(iters):
        b = next(it)
        x, c = b["x0"], b["c"].clone()
        drop = torch.rand(len(c), generator=g) < 0.15
        c[drop] = torch.randn(int(drop.sum()), 2, generator=g)
        t = torch.rand(len(x), generator=g)
        e = torch.randn(x.shape, generator=g)
        a, s = (u[:, None] for u in m.alpha_sigma(t))
        loss = ((m.net(a * x + s * e, t, c) - (a * e - s * x)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return m.eval()


OPTS: dict[str, Any] = dict(iters_per_round=300, lr=1e-3, every=100)
DATA = "toy two-mode 2-D, batch 256, seed 5"


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 12-input MLP: one thread is fastest on a shared 2-core machine
    teacher = train_teacher()
    cache = tmp_path_factory.mktemp("distill-cache")
    lines: list[str] = []
    got = distill_cached(teacher, 1, batches(seed=5), cache=cache, teacher_sha256=state_sha256(teacher.net), data=DATA,
                         progress=lines.append, **OPTS)
    g = torch.Generator().manual_seed(7)
    c, zT = torch.rand(512, 2, generator=g) * 2 - 1, torch.randn(512, 2, generator=g)
    yield {"teacher": teacher, "cache": cache, "got": got, "lines": lines, "c": c, "zT": zT}
    torch.set_num_threads(threads)


def _errors(toy: dict[str, Any]) -> dict[str, float]:
    teacher, c, zT = toy["teacher"], toy["c"], toy["zT"]
    out = {}
    with torch.no_grad():
        ref = ddim(teacher, zT, teacher.condition(c=c), 64)
        out["teacher64_truth"] = manifold_error(c, ref)
        for k in (1, 4):
            tk = ddim(teacher, zT, teacher.condition(c=c), k)
            st = toy["got"].students[k]
            sk = ddim(st, zT, st.condition(c=c), k)
            out[f"teacher{k}_ref"] = (tk - ref).norm(dim=1).mean().item()
            out[f"student{k}_ref"] = (sk - ref).norm(dim=1).mean().item()
            out[f"teacher{k}_truth"] = manifold_error(c, tk)
            out[f"student{k}_truth"] = manifold_error(c, sk)
    print(out)
    return out


def test_one_step_student_beats_the_teachers_one_step_ddim(toy: dict[str, Any]) -> None:
    e = _errors(toy)
    assert isinstance(toy["teacher"], Sampler)
    assert e["teacher64_truth"] < 0.1  # the guided 64-step teacher picks a mode
    assert e["teacher1_truth"] > 0.4  # its 1-step DDIM lands between the modes (distance 0.6)
    # measured: student1 0.21 vs teacher1 0.76 (to the teacher's 64 steps); 0.14 vs 0.55 (to the data)
    assert e["student1_ref"] < 0.45 * e["teacher1_ref"]
    assert e["student1_truth"] < 0.45 * e["teacher1_truth"]
    assert e["student4_ref"] < e["teacher4_ref"] and e["student4_truth"] < e["teacher4_truth"]
    assert sorted(toy["got"].students) == [1, 2, 4]


def test_progress_lines_name_round_loss_and_eta(toy: dict[str, Any]) -> None:
    it = [ln for ln in toy["lines"] if " iter " in ln]
    assert len(it) == 7 * 3  # guided + 6 rounds, one line per 100 iterations
    assert "round 6/6 (2 -> 1 steps)" in it[-1] and "loss" in it[-1] and "eta 0m00s" in it[-1]
    assert any("guided" in ln for ln in it)
    rounds = toy["got"].info["rounds"]
    assert [r["round"] for r in rounds] == ["guided", "64->32", "32->16", "16->8", "8->4", "4->2", "2->1"]


def test_guided_distillation_removes_the_unconditional_pass(toy: dict[str, Any]) -> None:
    teacher, student, c, zT = toy["teacher"], toy["got"].students[4], toy["c"], toy["zT"]
    with torch.no_grad():
        teacher.net.calls = student.net.calls = 0
        ddim(teacher, zT, teacher.condition(c=c), 4)
        ddim(student, zT, student.condition(c=c), 4)
    assert (teacher.net.calls, student.net.calls) == (8, 4)


def test_second_call_reuses_the_cached_students(toy: dict[str, Any]) -> None:
    def no_data() -> Iterator[dict[str, Tensor]]:
        raise AssertionError("a cache hit must not read data")
        yield {}

    lines: list[str] = []
    again = distill_cached(toy["teacher"], 1, no_data(), cache=toy["cache"], teacher_sha256=state_sha256(toy["teacher"].net),
                           data=DATA, progress=lines.append, **OPTS)
    assert again.cached and not lines and again.folder == toy["got"].folder
    for k in (1, 2, 4):
        a, b = again.students[k].net.state_dict(), toy["got"].students[k].net.state_dict()
        assert all(torch.equal(a[n], b[n]) for n in a)
    sha = state_sha256(toy["teacher"].net)
    opts = {o: v for o, v in OPTS.items() if o != "every"}
    keys = {distill_key(sha, k, DATA, **opts) for k in (1, 2, 4)}
    assert keys == {toy["got"].info["key"]}  # one run down to K = 1 serves every K it kept
    from safetensors import safe_open

    for k, path in again.paths.items():  # each file records its own K, not how far the run went
        with safe_open(str(path), "np") as f:
            assert json.loads(f.metadata()["lowlight.distill"])["steps"] == k
    assert distill_key(sha, 8, DATA, **opts) not in keys  # a K outside `keep` is a run of its own
    assert distill_key(sha, 1, DATA + " crop 64") != distill_key(sha, 1, DATA)
    assert distill_key("0" * 64, 1, DATA) != distill_key(sha, 1, DATA)


def test_interrupted_run_leaves_no_student(tmp_path: Path, toy: dict[str, Any]) -> None:
    class Killed(Exception):
        pass

    seen: list[str] = []

    def progress(line: str) -> None:
        seen.append(line)
        if "round 1/" in line:
            raise Killed

    with pytest.raises(Killed):
        distill_cached(toy["teacher"], 4, batches(seed=5), cache=tmp_path, teacher_sha256="ab" * 32, data=DATA,
                       progress=progress, iters_per_round=20, lr=1e-3, every=10)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    # the next run goes through and leaves exactly one finished stage folder
    done = distill_cached(toy["teacher"], 4, batches(seed=5), cache=tmp_path, teacher_sha256="ab" * 32, data=DATA,
                          progress=lambda s: None, iters_per_round=5, guided_iters=5, lr=1e-3, every=10)
    assert not done.cached and sorted(done.paths) == [1, 2, 4]  # a run for K = 4 goes on to every K it keeps
    assert [p.name for p in (tmp_path / "distill").iterdir()] == [done.folder.name]


def test_bad_step_counts_and_short_data_say_what_to_do(toy: dict[str, Any]) -> None:
    with pytest.raises(LowlightError, match="cannot be reached") as e:
        check_steps(3, 64)
    assert e.value.fix and "4" in e.value.fix
    with pytest.raises(LowlightError, match="not a power of two"):
        check_steps(4, 50)
    with pytest.raises(LowlightError, match="ran out"):
        distill(toy["teacher"], 32, iter([next(batches())] * 3), iters_per_round=5, guided_iters=0, progress=lambda s: None)


# -- DarkDiff: the trainer and `lowlight-compile distill` on the tiny config ------------------------------


# `tiny_teacher` (conftest.py): a tiny DarkDiff teacher trained for a few steps, shared with test_darkdiff_compile.


def test_trainer_writes_weights_metadata_and_held_out_metrics(tiny_teacher: Path) -> None:
    import json

    from safetensors import safe_open

    from lowlight.models import load

    with safe_open(str(tiny_teacher), "np") as f:
        meta = f.metadata()
    assert meta["lowlight.config"] == "tiny" and json.loads(meta["lowlight.train"])["vae_steps"] == 4
    rec = json.loads(tiny_teacher.with_suffix(".json").read_text())
    assert {"command", "date", "train_seconds", "options", "metrics", "held_out", "data"} <= set(rec)
    assert 5 < rec["metrics"]["teacher_50"]["psnr"] < 60 and 0 < rec["metrics"]["teacher_50"]["ssim"] <= 1
    assert all(p.endswith(".png") for p in rec["held_out"]) and "shared/data/clean" in rec["data"]
    model = load("darkdiff", config="tiny", checkpoint=str(tiny_teacher))
    assert float(model.vae.latent_scale) != 1.0  # stage 1 measured the latents' spread


def test_distill_cli_writes_a_student_and_reuses_the_cache(tiny_teacher: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from safetensors import safe_open

    from lowlight.compile.cache import file_sha256
    from lowlight.compile.cli import main
    from lowlight.compile.distill import load_student
    from lowlight.models import load
    from lowlight.models.train_darkdiff import DarkDiffSampler

    out, cache = tmp_path / "student2.safetensors", tmp_path / "cache"
    args = ["distill", str(tiny_teacher), "--model", "darkdiff", "--config", "tiny", "--steps", "2", "--out", str(out),
            "--iters", "3", "--cache-dir", str(cache)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "round 5/6 (4 -> 2 steps)" in err and "round 6/6 (2 -> 1 steps)" in err and "eta" in err
    with safe_open(str(out), "np") as f:
        meta = json.loads(f.metadata()["lowlight.distill"])
        keys = set(f.keys())
    assert meta["teacher_sha256"] == file_sha256(tiny_teacher) and meta["steps"] == 2 and "progressive" in meta["method"]
    assert keys and all(k.split(".")[0] in ("unet", "context") for k in keys)  # the VAE stays the teacher's
    teacher = load("darkdiff", config="tiny", checkpoint=str(tiny_teacher))
    student = load_student(DarkDiffSampler(teacher), 2, out).model
    raw, gain = torch.rand(1, 4, 32, 32) * 0.01, torch.full((1, 4), 150.0)
    with torch.no_grad():
        assert student(raw, gain).shape == (1, 3, 32, 32) and student.student_steps == 2
    assert json.loads(out.with_suffix(".json").read_text())["cached"] is False

    before = out.read_bytes()
    assert main(args) == 2 and out.read_bytes() == before  # no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert "from the cache" in capsys.readouterr().err
    assert json.loads(out.with_suffix(".json").read_text())["cached"] is True


@pytest.mark.parametrize("change, message", [
    (["--steps", "3"], "cannot be reached"),
    (["--out", "TEACHER"], "the input"),
    (["--out", "FOREIGN"], "not a student written by"),
    (["--model", "amnet"], "no distillation recipe"),
    (["--config", "paper"], "cannot be distilled here"),
])
def test_distill_cli_refuses_with_a_fix(tiny_teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        change: list[str], message: str) -> None:
    from lowlight.compile.cli import main

    foreign = tmp_path / "mine.safetensors"
    foreign.write_bytes(b"not ours")
    args = {"--model": "darkdiff", "--config": "tiny", "--steps": "4", "--out": str(tmp_path / "s.safetensors"),
            "--cache-dir": str(tmp_path / "cache"), "--iters": "2"}
    value = {"TEACHER": str(tiny_teacher), "FOREIGN": str(foreign)}.get(change[1], change[1])
    args[change[0]] = value
    argv = ["distill", str(tiny_teacher), *[x for kv in args.items() for x in kv]]
    assert main(argv + (["--overwrite"] if change[1] == "FOREIGN" else [])) == 2
    err = capsys.readouterr().err
    assert message in err and "fix:" in err
    assert foreign.read_bytes() == b"not ours" and not (tmp_path / "s.safetensors").exists()
    assert not list((tmp_path / "cache").rglob("*.safetensors")) if (tmp_path / "cache").exists() else True
