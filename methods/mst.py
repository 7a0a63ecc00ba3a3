"""MST-Distill: "Mixture of Specialized Teachers for Cross-Modal Knowledge Distillation" (Li et al.,
ACM MM 2025), after Gray-OREO/MST-Distill @093b2fe8, ``KD_methods/MST.py`` (MaskNet_1d/2d,
SpatialReduction, GateNet, ``load_balancing_loss``, ``k_ways_MTGdistillation_detached``,
``distillation_loss``) and ``main-MST-Distill.py`` (the stages). Written anew from that code.

The teacher mixture. On a teacher-set direction (``av2v``) the mixture is the run's multimodal
teacher (:mod:`bench.models.fusion`) and the cached unimodal teacher of every member that is not
the student's modality (``a``: the cross-modal teacher; the reference has one). Each teacher gets
``mask_layers`` (2) experts: a MaskNet on one of its layers, the rest of its forward run on from
the masked tensor. The layers, where the reference hooks two named layers of its networks:

* the fusion teacher (``late_fusion``): the fused vector (input of its hidden layer, the
  reference's ``concat_identity``) and the hidden vector (input of the classifier, ``fc1``);
* a unimodal teacher: its last stage map (a channel mask from MaskNet_2d, or 1-D convolutions for
  sequence maps, then pooling) and its pooled feature (MaskNet_1d), i.e. the last two inputs of
  the head of every cmkd-bench backbone; no module names needed.

A MaskNet embeds the (spatially reduced) vector into ``D`` tokens of width ``H = D // (f*h) * h``
(``f`` hidden factor 2, ``h`` heads 3), runs multi-head self-attention over them and maps each
token to a sigmoid mask value. The router is two linear layers without a nonlinearity on the
student's logits; its softmax gate picks the top-k experts (unweighted), whose logits, detached,
are the KD targets; the router learns only from the load balancing term, KL(uniform || mean gate)
divided by the number of experts (``nn.KLDivLoss(batchmean)`` on a 1-D input).

Stages, as epochs of the run (relative to its schedule by default, ``stage_mode=absolute`` for the
reference's epoch counts; reference: 1 + 1 + 100 epochs):

1. epochs ``1..s1`` (1 of 100): the student's part of the reference's co-training: CE + KD from
   the unmasked multimodal and cross-modal teachers. The reference co-trains the teachers from
   scratch with the student here; cmkd-bench's teachers are trained beforehand with the teachers'
   recipe (cached, shared by every method) and stay frozen.
2. epochs ``s1+1..s1+s2`` (1 of 100): every MaskNet is trained (its own Adam, ``mask_lr`` 1e-4 as
   the reference's ``s2_lr``), one step per batch, so that its masked teacher mimics the student:
   KL(student, detached || masked teacher) at T. The reference freezes the student for this
   stage; the runner trains the student at every step, so it keeps the stage-1 objective here.
   The reference keeps the masks of the best validation epoch of stage 2; with its single epoch
   that is the last one, which is what is kept here.
3. later epochs: CE + top-k KD from the routed experts + load balancing, weights 1; masks frozen.

Not dense: the reference's NYU variant (GateNet_dense, 2-D masks on decoder maps) is not built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.api.config import hp
from bench.api.errors import BenchError
from bench.api.method import Method, relative_epochs
from bench.api.registry import register_method
from bench.api.search import Integer
from bench.data.tsets import is_set, members
from bench.models import Backbone, ModelOutput

# -- the loss terms (pure) ------------------------------------------------------------------------


def mst_kd(z_s: torch.Tensor, z_t: torch.Tensor, T: float = 4.0) -> torch.Tensor:
    """The reference ``distillation_loss``: KL(softmax(z_t/T) || softmax(z_s/T)), batch mean, times T^2."""
    return F.kl_div(F.log_softmax(z_s / T, dim=1), F.softmax(z_t / T, dim=1), reduction="batchmean") * T * T


def load_balancing(gate: torch.Tensor, mode: str = "kl") -> torch.Tensor:
    """``kl``: KL(uniform || mean gate) / number of experts (the reference's KLDivLoss(batchmean) on
    the 1-D mean); ``cv``: std / mean of the experts' summed gates (unbiased std)."""
    if mode == "kl":
        mean = gate.mean(0)
        u = torch.full_like(mean, 1.0 / mean.numel())
        return (u * (u.log() - mean.log())).sum() / mean.numel()
    imp = gate.sum(0)
    return imp.std() / imp.mean()


def route_topk(gate: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) indices of the k largest gate values per sample (selection only: unweighted)."""
    return torch.topk(gate, k=k, dim=1).indices


def topk_expert_kd(experts: list[torch.Tensor], z_s: torch.Tensor, gate: torch.Tensor, k: int,
                   T: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over the k routed experts of :func:`mst_kd` to each sample's expert logits (detached);
    returns (loss, indices)."""
    stacked = torch.stack([e.detach() for e in experts], 1)  # (B, E, C)
    idx = route_topk(gate, k)
    chosen = stacked.gather(1, idx[:, :, None].expand(-1, -1, stacked.shape[2]))
    return sum(mst_kd(z_s, chosen[:, i], T) for i in range(k)) / k, idx  # type: ignore[return-value]


# -- the modules ------------------------------------------------------------------------------------


def mask_hidden(dim: int, factor: int, heads: int) -> int:
    """The reference's token width ``dim // (factor * heads) * heads`` (at least one per head)."""
    return max(dim // (factor * heads), 1) * heads


class Reduce(nn.Module):
    """Reference SpatialReduction: depthwise 3x3 stride-2 conv, 1x1 conv, BN, ReLU, global mean
    (1-D convolutions for sequence maps (B, C, L))."""

    def __init__(self, channels: int, dim: int):
        super().__init__()
        conv, bn = (nn.Conv2d, nn.BatchNorm2d) if dim == 2 else (nn.Conv1d, nn.BatchNorm1d)
        self.net = nn.Sequential(conv(channels, channels, 3, 2, 1, groups=channels, bias=False),
                                 conv(channels, channels, 1, bias=False), bn(channels), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(2).mean(-1)


class MaskNet(nn.Module):
    """A (B, D) vector (or a (B, D, ...) map, reduced first) -> a (B, D) mask in (0, 1)."""

    def __init__(self, dim: int, heads: int, factor: int, spatial: int = 0):
        super().__init__()
        self.dim, self.hidden = dim, mask_hidden(dim, factor, heads)
        self.reduce = Reduce(dim, spatial) if spatial else None
        self.embed = nn.Linear(dim, self.hidden * dim)
        self.mha = nn.MultiheadAttention(self.hidden, heads, batch_first=True)
        self.fc = nn.Linear(self.hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.reduce(x) if self.reduce is not None else x
        tokens = self.embed(v).reshape(v.shape[0], self.dim, self.hidden)
        att, _ = self.mha(tokens, tokens, tokens)
        return torch.sigmoid(self.fc(att).squeeze(-1))


class Router(nn.Module):
    """Reference GateNet: Linear(C, 2C) -> Linear(2C, E), no nonlinearity."""

    def __init__(self, num_classes: int, experts: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(num_classes, 2 * num_classes), nn.Linear(2 * num_classes, experts)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(z))


# -- experts: a teacher with a mask on one of its layers ---------------------------------------------


def teacher_taps(net: Backbone, x: Any) -> list[tuple[str, torch.Tensor]]:
    """The two layers MST masks, as (name, tensor), deepest last (module docstring)."""
    if hasattr(net, "from_tap"):  # the fusion teacher
        fused = net.fused(net.member_outputs(x))
        taps = [("fused", fused)]
        if "hidden" in net.taps:
            taps.append(("hidden", F.relu(net.fc(fused))))
        return taps
    out = net(x)
    return [("last_map", out.feature_maps[-1]), ("feature", out.feature)]


def probe_taps(net: Backbone, probe: ModelOutput) -> list[tuple[str, torch.Tensor]]:
    """:func:`teacher_taps`' shapes from a dry-run output (the runner's probe), for building the masks."""
    if hasattr(net, "from_tap"):
        fused = probe.feature.new_zeros(probe.feature.shape[0], net.fused_dim)
        return [("fused", fused)] + ([("hidden", probe.feature)] if "hidden" in net.taps else [])
    return [("last_map", probe.feature_maps[-1]), ("feature", probe.feature)]


def continue_from(net: Backbone, name: str, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The teacher's logits with ``mask`` applied at tap ``name`` (the rest of its forward run on)."""
    if hasattr(net, "from_tap"):
        return net.from_tap(name, mask * h).logits
    if name == "last_map":
        m = mask.reshape(*mask.shape, *([1] * (h.dim() - 2)))
        return net.classifier(net.pool(m * h))
    return net.classifier(mask * h)


@dataclass
class MSTParams:
    T: float = hp(4.0, "temperature of every KD term", gt=0)
    k: int = hp(1, "experts routed to each sample (top-k, unweighted)", ge=1)
    mask_layers: int = hp(2, "masked layers (experts) per teacher", ge=1, le=2)
    mask_heads: int = hp(3, "attention heads of each MaskNet", ge=1)
    hidden_factor: int = hp(2, "MaskNet token width = D // (factor * heads) * heads", ge=1)
    lb_mode: str = hp("kl", "load balancing: kl (KL(uniform || mean gate) / experts, the default) | cv")
    w_task: float = hp(1.0, "weight of the student's cross-entropy", ge=0)
    w_kl: float = hp(1.0, "weight of the top-k expert KD", ge=0)
    w_lb: float = hp(1.0, "weight of the load balancing term", ge=0)
    mask_lr: float = hp(1e-4, "Adam learning rate of the MaskNets (stage 2, the reference's s2_lr)", gt=0)
    stage1_epochs: int = hp(1, "epochs of stage 1 (student with the unmasked teachers) in the reference schedule", ge=0)
    stage2_epochs: int = hp(1, "epochs of stage 2 (MaskNet training) in the reference schedule", ge=1)
    stages_of: int = hp(100, "the reference's stage-3 schedule the stage lengths belong to", ge=1)
    stage_mode: str = hp("relative", "relative: stage lengths keep their ratio to stages_of x train.epochs | "
                                     "absolute: the reference's epoch counts")

    def validate(self) -> None:
        if self.lb_mode not in ("kl", "cv"):
            raise ValueError(f"lb_mode must be kl or cv, got {self.lb_mode!r}")
        if self.stage_mode not in ("relative", "absolute"):
            raise ValueError(f"stage_mode must be relative or absolute, got {self.stage_mode!r}")

    def stages(self, epochs: int) -> tuple[int, int]:
        """(last epoch of stage 1, last epoch of stage 2) in a run of ``epochs`` epochs."""
        if self.stage_mode == "absolute":
            s1, s2 = self.stage1_epochs, self.stage2_epochs
        else:
            s1 = relative_epochs(self.stage1_epochs, self.stages_of, epochs) if self.stage1_epochs else 0
            s2 = relative_epochs(self.stage2_epochs, self.stages_of, epochs)
        return s1, s1 + s2


@register_method("mst")
class MSTDistill(Method):
    category = "Cross-Modal"
    description = "MST-Distill (Li et al. 2025): routed mixture of masked multimodal and cross-modal teachers"
    reference = "Gray-OREO/MST-Distill@093b2fe8 KD_methods/MST.py, main-MST-Distill.py"
    Params = MSTParams
    runs_teachers = True
    requires_teacher_set = True
    dense_ok = False
    dense_reason = "the reference's dense variant (GateNet_dense, 2-D masks on decoder maps) is not implemented"
    search_space = {"k": Integer(1, 2)}

    def extra_teachers(self) -> list[str]:
        t = self.ctx.teacher_modality
        if not is_set(t):
            return []
        return [m for m in members(t) if m != self.ctx.student_modality]  # type: ignore[arg-type]

    def setup(self, student: Backbone, teacher: Backbone | None, s_probe: ModelOutput, t_probe: ModelOutput | None) -> None:
        super().setup(student, teacher, s_probe, t_probe)
        t_mod = self.ctx.teacher_modality
        if teacher is None or not is_set(t_mod) or not hasattr(teacher, "from_tap"):
            raise BenchError(f"mst distils a mixture of a multimodal and a cross-modal teacher: it needs a teacher-set "
                             f"direction (e.g. av2v, a+v2v); {t_mod!r} -> {self.ctx.student_modality!r} has one teacher")
        cross = getattr(self, "extra_nets", {})
        if not cross:
            raise BenchError(f"mst on {t_mod} -> {self.ctx.student_modality}: the set has no member besides the "
                             f"student's modality, so there is no cross-modal teacher")
        self.nets = {"multimodal": teacher, **cross}
        probes = {"multimodal": t_probe, **getattr(self, "extra_probes", {})}
        masks = nn.ModuleDict()
        for key, net in self.nets.items():
            taps = probe_taps(net, probes[key])
            if len(taps) < self.p.mask_layers:
                raise BenchError(f"mst.mask_layers={self.p.mask_layers}: the {key} teacher has {len(taps)} maskable "
                                 f"layer(s) ({', '.join(n for n, _ in taps)}); the late_fusion teacher has two")
            for name, h in taps[:self.p.mask_layers]:
                spatial = h.dim() - 2
                if spatial > 2:
                    raise BenchError(f"mst: the {key} teacher's {name} has {spatial} spatial axes; MaskNets take 0-2")
                masks[f"{key}:{name}"] = MaskNet(int(h.shape[1]), self.p.mask_heads, self.p.hidden_factor, spatial)
        self.experts = list(masks.keys())
        if self.p.k > len(self.experts):
            raise BenchError(f"mst.k={self.p.k}: the mixture has {len(self.experts)} experts ({', '.join(self.experts)})")
        self.modules["masks"] = masks
        self.modules["router"] = Router(self.ctx.num_classes, len(self.experts))
        self.mask_opts = {e: torch.optim.Adam(masks[e].parameters(), lr=self.p.mask_lr) for e in self.experts}
        self.routing = torch.zeros(len(self.experts), dtype=torch.long)

    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self.modules["router"].parameters())  # the MaskNets have their own optimisers (stage 2)

    def _inputs(self, key: str) -> Any:
        x = self.inputs  # type: ignore[attr-defined]
        if key == "multimodal":
            return {m: x[m] for m in members(self.ctx.teacher_modality)}  # type: ignore[arg-type]
        return x[key]

    def expert_logits(self, train_masks: bool = False) -> list[torch.Tensor]:
        """Every expert's logits on the step's inputs (teachers frozen; masks with grad if ``train_masks``)."""
        out = []
        masks = self.modules["masks"]
        for key, net in self.nets.items():
            net.eval()
            with torch.no_grad():
                taps = teacher_taps(net, self._inputs(key))[:self.p.mask_layers]
            for name, h in taps:
                mn = masks[f"{key}:{name}"]
                mn.train(train_masks)
                with torch.set_grad_enabled(train_masks):
                    out.append(continue_from(net, name, h, mn(h)))
        return out

    def train_masks(self, z_s: torch.Tensor) -> torch.Tensor:
        """Stage 2: one Adam step per MaskNet towards the (detached) student; returns the mean loss."""
        target = z_s.detach()
        total = torch.zeros((), device=z_s.device)
        for e, z_e in zip(self.experts, self.expert_logits(train_masks=True)):
            loss = mst_kd(z_e, target, self.p.T)
            self.mask_opts[e].zero_grad(set_to_none=True)
            loss.backward()
            self.mask_opts[e].step()
            total = total + loss.detach()
        return total / len(self.experts)

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        s1, s2 = self.p.stages(self.ctx.epochs)
        ce = self.p.w_task * self.task_loss(s.logits, y)
        if epoch <= s2:
            if epoch > s1:
                self.last_mask_loss = float(self.train_masks(s.logits))
            kd = mst_kd(s.logits, t.logits.detach(), self.p.T)
            for key in self.nets:
                if key != "multimodal":
                    with torch.no_grad():
                        z = self.nets[key](self._inputs(key)).logits
                    kd = kd + mst_kd(s.logits, z, self.p.T)
            return {"ce": ce, "kd_unmasked": self.p.w_kl * kd}
        with torch.no_grad():
            experts = self.expert_logits()
        gate = F.softmax(self.modules["router"](s.logits), dim=1)
        kd, idx = topk_expert_kd(experts, s.logits, gate, self.p.k, self.p.T)
        self.routing += torch.bincount(idx.flatten().cpu(), minlength=len(self.experts))
        return {"ce": ce, "kd_topk": self.p.w_kl * kd, "lb": self.p.w_lb * load_balancing(gate, self.p.lb_mode)}

    def report(self) -> dict[str, object]:
        s1, s2 = self.p.stages(self.ctx.epochs)
        n = int(self.routing.sum())
        return {"stage1_last_epoch": s1, "stage2_last_epoch": s2, "experts": list(self.experts),
                "routing_share": [float(c) / n if n else 0.0 for c in self.routing.tolist()],
                "last_mask_loss": getattr(self, "last_mask_loss", None)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "mask_opts": {e: o.state_dict() for e, o in self.mask_opts.items()},
                "routing": self.routing.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for e, o in self.mask_opts.items():
            if e in state.get("mask_opts", {}):
                o.load_state_dict(state["mask_opts"][e])
        if "routing" in state:
            self.routing = state["routing"].clone()
