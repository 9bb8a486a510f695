"""The distill stage's "reflow" method (compile/distill.py) on a toy conditional flow-matching teacher.

The toy: x in R^4 given a condition c in R^2 is Gaussian, x = f(c) + 0.5 n,
so the teacher's flow (alpha = 1 - t, sigma = t) is curved: one Euler step
from z lands on the conditional mean f(c), while the 5-step teacher lands near
f(c) + 0.5 z. A tiny MLP velocity net trained by flow matching inside the
module fixture is the teacher; the stage reflows it on its own couplings and
distills a one-step student.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from torch import Tensor, nn

from lowlight.compile.distill import (
    METHOD, Sampler, check_steps, ddim, ddim_step, distill, distill_cached, distill_key, state_sha256,
)
from lowlight.compile.cache import file_sha256
from lowlight.core.errors import LowlightError

TEACHER_STEPS = 5
W = torch.tensor([[1.0, -0.5, 0.3, 0.8], [0.4, 0.9, -0.7, 0.2]])


def f(c: Tensor) -> Tensor:
    """The conditional mean of the toy data: a smooth nonlinear map R^2 -> R^4."""
    return torch.sin(2 * c @ W.to(c))


class Net(nn.Module):
    """v(z, t, c): a 3-layer MLP with a sinusoidal time embedding."""

    def __init__(self, hidden: int = 96) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Linear(14, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 4))

    def forward(self, z: Tensor, t: Tensor, c: Tensor) -> Tensor:
        fr = 2 * 2 ** torch.arange(4, dtype=z.dtype)
        emb = torch.cat([torch.sin(t[:, None] * fr), torch.cos(t[:, None] * fr)], 1)
        return self.f(torch.cat([z, c, emb], 1))


class FlowNoX0(nn.Module):
    """The Sampler protocol over `Net` on the straight path, but without x0_eps (what reflow must refuse)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Net()
        self.student_steps: int | None = None

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return 1 - t, t

    def condition(self, c: Tensor, **_: Tensor) -> Tensor:
        return c

    def velocity(self, z: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return self.net(z, t, cond)  # type: ignore[no-any-return]

    def clean_latent(self, x0: Tensor, **_: Tensor) -> Tensor:
        return x0

    def latent_shape(self, c: Tensor, **_: Tensor) -> tuple[int, ...]:
        return (c.shape[0], 4)

    def make_student(self, steps: int) -> "FlowNoX0":
        s = copy.deepcopy(self)
        s.student_steps = steps
        return s

    def trained_modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}


class Flow(FlowNoX0):
    """Flow matching (rectified flow): z_t = (1 - t) x + t eps, v = eps - x."""

    def x0_eps(self, z: Tensor, v: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        tb = t.reshape(-1, *([1] * (z.dim() - 1))).to(z)
        return z - tb * v, z + (1 - tb) * v


class FlowOwnSampler(Flow):
    """A flow with its own teacher sampler (midpoint steps, as MMAIF's) and an image-space loss; counts their calls."""

    calls = {"sample": 0, "image_loss": 0}

    def sample(self, z: Tensor, cond: Tensor) -> Tensor:
        FlowOwnSampler.calls["sample"] += 1
        n = TEACHER_STEPS
        for k in range(n):
            t, h = 1 - k / n, 1 / n
            tt = torch.full((z.shape[0],), t)
            zm = z - h / 2 * self.velocity(z, tt, cond)
            z = z - h * self.velocity(zm, tt - h / 2, cond)
        return z

    def image_loss(self, x: Tensor, target: Tensor, batch: dict[str, Tensor]) -> Tensor:
        FlowOwnSampler.calls["image_loss"] += 1
        return (x - target).abs().mean()


def batches(n: int = 256, seed: int = 0) -> Iterator[dict[str, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    while True:
        c = torch.rand(n, 2, generator=g) * 2 - 1
        yield {"c": c, "x0": f(c) + 0.5 * torch.randn(n, 4, generator=g)}


def train_teacher(cls: type[Flow] = Flow, iters: int = 600, lr: float = 3e-3, seed: int = 0) -> Flow:
    """Conditional flow matching: v(z_t, t, c) regresses eps - x on z_t = (1 - t) x + t eps."""
    torch.manual_seed(seed)
    m = cls()
    opt = torch.optim.Adam(m.net.parameters(), lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / iters)
    it, g = batches(seed=seed + 100), torch.Generator().manual_seed(seed)
    for _ in range(iters):
        b = next(it)
        x, c = b["x0"], b["c"]
        t = torch.rand(len(x), generator=g)
        e = torch.randn(x.shape, generator=g)
        loss = ((m.net((1 - t[:, None]) * x + t[:, None] * e, t, c) - (e - x)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return m.eval()


OPTS: dict[str, Any] = dict(iters_per_round=300, lr=1e-3, every=100, method="reflow", teacher_steps=TEACHER_STEPS)
DATA = "toy 4-D Gaussian given c, batch 256, seed 5"


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 14-input MLP: one thread is fastest on a shared 2-core machine
    teacher = train_teacher()
    cache = tmp_path_factory.mktemp("reflow-cache")
    lines: list[str] = []
    got = distill_cached(teacher, 1, batches(seed=5), cache=cache, teacher_sha256=state_sha256(teacher.net), data=DATA,
                         keep=(2, 1), progress=lines.append, **OPTS)
    g = torch.Generator().manual_seed(7)
    c, zT = torch.rand(512, 2, generator=g) * 2 - 1, torch.randn(512, 4, generator=g)
    yield {"teacher": teacher, "cache": cache, "got": got, "lines": lines, "c": c, "zT": zT}
    torch.set_num_threads(threads)


def test_flow_ddim_step_is_an_euler_step() -> None:
    torch.manual_seed(0)
    s = Flow().double()
    z, c = torch.randn(8, 4, dtype=torch.float64), torch.rand(8, 2, dtype=torch.float64)
    with torch.no_grad():
        for t, tn in ((1.0, 0.8), (0.8, 0.6), (0.6, 0.25), (0.2, 0.0)):
            v = s.velocity(z, torch.full((8,), t, dtype=torch.float64), c)
            step = ddim_step(s, z, t, tn, c)
            assert torch.allclose(step, z + (tn - t) * v, rtol=0, atol=1e-12)


def _mse(a: Tensor, b: Tensor) -> float:
    return ((a - b) ** 2).sum(dim=1).mean().item()


def test_reflow_one_step_student_beats_the_teachers_one_euler_step(toy: dict[str, Any]) -> None:
    teacher, c, zT, got = toy["teacher"], toy["c"], toy["zT"], toy["got"]
    assert isinstance(teacher, Sampler) and sorted(got.students) == [1, 2]
    assert got.students[2].student_steps == 2 and got.students[1].student_steps == 1
    with torch.no_grad():
        ref = ddim(teacher, zT, c, TEACHER_STEPS)  # the teacher's own 5-step sample
        e = {f"teacher{k}": _mse(ddim(teacher, zT, c, k), ref) for k in (1, 2)}
        e.update({f"student{k}": _mse(ddim(got.students[k], zT, c, k), ref) for k in (1, 2)})
    print(e)
    # measured: teacher 0.97 / 0.16 at 1 / 2 Euler steps, students 0.0005 / 0.013 (squared distance to the 5-step sample)
    assert e["teacher1"] > 0.5  # one Euler step lands on the conditional mean, ~0.5 * |z| away
    assert e["student1"] < 0.05 * e["teacher1"]
    assert e["student2"] < 0.3 * e["teacher2"]  # the reflowed flow is straighter than the teacher's


def test_progress_lines_and_history_name_the_reflow_stages(toy: dict[str, Any]) -> None:
    it = [ln for ln in toy["lines"] if " iter " in ln]
    assert len(it) == 2 * 3  # reflow + one-step, one line per 100 iterations
    assert "stage 1/2 reflow" in it[0] and "stage 2/2 one-step" in it[-1]
    assert all("loss" in ln and "elapsed" in ln and "eta" in ln for ln in it) and "eta 0m00s" in it[-1]
    info = toy["got"].info
    assert [r["round"] for r in info["rounds"]] == ["reflow", "one-step"]
    assert info["method"] == METHOD["reflow"] and info["options"]["teacher_steps"] == TEACHER_STEPS


def test_reflow_is_cached_under_its_own_key(toy: dict[str, Any]) -> None:
    def no_data() -> Iterator[dict[str, Tensor]]:
        raise AssertionError("a cache hit must not read data")
        yield {}

    teacher, got = toy["teacher"], toy["got"]
    lines: list[str] = []
    again = distill_cached(teacher, 2, no_data(), cache=toy["cache"], teacher_sha256=state_sha256(teacher.net), data=DATA,
                           keep=(2, 1), progress=lines.append, **OPTS)
    assert again.cached and not lines and again.folder == got.folder and again.paths == got.paths
    for k in (1, 2):
        a, b = again.students[k].net.state_dict(), got.students[k].net.state_dict()
        assert all(torch.equal(a[n], b[n]) for n in a)
    from safetensors import safe_open

    for k, path in again.paths.items():
        with safe_open(str(path), "np") as fh:
            meta = json.loads(fh.metadata()["lowlight.distill"])
        assert meta["steps"] == k and meta["method"] == METHOD["reflow"]
    sha = state_sha256(teacher.net)
    opts = {o: v for o, v in OPTS.items() if o not in ("every", "method", "teacher_steps")}
    reflow = distill_key(sha, 1, DATA, keep=(2, 1), method="reflow", teacher_steps=TEACHER_STEPS, **opts)
    assert reflow == got.info["key"]
    assert reflow != distill_key(sha, 1, DATA, keep=(2, 1), **opts)  # progressive, the same other options
    assert reflow != distill_key(sha, 1, DATA, keep=(2, 1), method="reflow", teacher_steps=8, **opts)
    # a sampler's own loss terms (its loss_note, e.g. MMAIF's ground-truth term) are part of the key
    assert reflow != distill_key(sha, 1, DATA, keep=(2, 1), method="reflow", teacher_steps=TEACHER_STEPS, loss="+ 5 x L1 to the truth", **opts)


def test_one_step_stage_continues_from_a_given_student(toy: dict[str, Any]) -> None:
    """`init`: only the one-step stage runs, from that student's weights; its sha256 is in the key; the
    continued student is closer to the teacher's 5-step samples than the one it started from."""
    teacher, c, zT, got = toy["teacher"], toy["c"], toy["zT"], toy["got"]
    sha = state_sha256(teacher.net)
    lines: list[str] = []
    more = distill_cached(teacher, 1, batches(seed=11), cache=toy["cache"], teacher_sha256=sha, data=DATA, keep=(2, 1),
                          progress=lines.append, init=got.paths[1], seed=11, **{**OPTS, "iters_per_round": 100, "lr": 3e-4})
    assert not more.cached and sorted(more.students) == [1] and more.folder != got.folder
    assert [r["round"] for r in more.info["rounds"]] == ["one-step (continued)"]
    assert more.info["options"]["init_sha256"] == file_sha256(got.paths[1]) and more.info["options"]["keep"] == [1]
    assert any("continued from the given student" in ln for ln in lines)
    with torch.no_grad():
        ref = ddim(teacher, zT, c, TEACHER_STEPS)
        before, after = _mse(ddim(got.students[1], zT, c, 1), ref), _mse(ddim(more.students[1], zT, c, 1), ref)
    print(before, after)
    assert after < before
    # only reflow's one-step stage can be continued
    for method, k in (("progressive", 1), ("reflow", 2)):
        with pytest.raises(LowlightError, match="--init continues the one-step stage") as e:
            distill_cached(teacher, k, batches(), cache=toy["cache"], teacher_sha256=sha, data=DATA, init=got.paths[1],
                           **{**OPTS, "method": method})
        assert e.value.fix and "--steps 1" in e.value.fix


def test_mmaif_one_step_loss_adds_the_ground_truth_term() -> None:
    """MMAIF's image loss: L1 to the decoded teacher sample + GT_WEIGHT x L1 to the ground truth, named in loss_note."""
    import torch

    from lowlight.models.mmaif import build
    from lowlight.models.train_mmaif import GT_WEIGHT, MMAIFSampler

    torch.manual_seed(0)
    s = MMAIFSampler(build("tiny").eval())
    z = torch.randn(s.latent_shape(torch.zeros(1, 3, 32, 32)))
    with torch.no_grad():
        img = s.model.vae.decode(z)
        target = torch.rand_like(img)
        got = s.image_loss(z, z, {"target": target})
    assert float(got) == pytest.approx(GT_WEIGHT * float(torch.nn.functional.l1_loss(img, target)), rel=1e-5)  # teacher term 0
    assert f"{GT_WEIGHT:g} x L1 to the ground truth" in s.loss_note


def test_bad_step_counts_are_refused_with_a_fix(toy: dict[str, Any]) -> None:
    for k in (TEACHER_STEPS, 7, 0):
        with pytest.raises(LowlightError, match="cannot be distilled by reflow") as e:
            check_steps(k, method="reflow", teacher_steps=TEACHER_STEPS)
        assert e.value.fix and "1, 2, 3, 4" in e.value.fix
    check_steps(3, method="reflow", teacher_steps=TEACHER_STEPS)  # not a power of two: fine for reflow
    with pytest.raises(LowlightError, match="no smaller step count"):
        check_steps(1, method="reflow", teacher_steps=1)
    with pytest.raises(LowlightError, match="unknown distillation method"):
        check_steps(1, method="consistency")
    with pytest.raises(LowlightError, match="cannot be distilled by reflow"):
        distill(toy["teacher"], TEACHER_STEPS, batches(), method="reflow", teacher_steps=TEACHER_STEPS, progress=lambda s: None)


def test_reflow_refuses_a_sampler_without_x0_eps() -> None:
    with pytest.raises(LowlightError, match="x0_eps") as e:
        distill(FlowNoX0(), 1, batches(), method="reflow", teacher_steps=TEACHER_STEPS, iters_per_round=2, progress=lambda s: None)
    assert e.value.fix and "progressive" in e.value.fix


def test_reflow_uses_the_samplers_own_sampler_and_image_loss() -> None:
    torch.manual_seed(0)
    teacher = FlowOwnSampler().eval()
    FlowOwnSampler.calls.update(sample=0, image_loss=0)
    hist: dict[str, Any] = {}
    got = distill(teacher, 1, batches(n=16), keep=(3, 1), iters_per_round=4, lr=1e-3, every=2, method="reflow",
                  teacher_steps=TEACHER_STEPS, progress=lambda s: None, history=hist)
    assert sorted(got) == [1, 3] and got[3].student_steps == 3
    assert FlowOwnSampler.calls == {"sample": 8, "image_loss": 4}  # a coupling per batch; the aux loss in the one-step stage
    assert [r["round"] for r in hist["rounds"]] == ["reflow", "one-step"]


def test_student_for_passes_the_recipes_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lowlight.compile import cmd_distill

    torch.manual_seed(0)
    teacher = Flow().eval()
    ckpt = tmp_path / "teacher.safetensors"
    ckpt.write_bytes(b"weights")

    def setup(checkpoint: str, config: str, **_: Any) -> dict[str, Any]:
        return {"teacher": teacher, "batches": batches(n=16), "data": "toy", "iters_per_round": 3, "lr": 1e-3, "every": 3,
                "method": "reflow", "teacher_steps": TEACHER_STEPS}

    monkeypatch.setattr(cmd_distill, "recipe", lambda family: setup)
    lines: list[str] = []
    with pytest.raises(LowlightError, match="cannot be distilled by reflow"):
        cmd_distill.student_for("toyflow", ckpt, "tiny", TEACHER_STEPS, cache_dir=tmp_path / "cache", say=lines.append)
    assert not lines and not (tmp_path / "cache").exists()
    # start_steps is a progressive flag: a reflow family ignores it
    got = cmd_distill.student_for("toyflow", ckpt, "tiny", 3, cache_dir=tmp_path / "cache", start_steps=50, say=lines.append)
    assert sorted(got.students) == [1, 2, 3, 4] and got.info["options"]["method"] == METHOD["reflow"]
    assert any("stage 2/2 one-step" in ln for ln in lines)
