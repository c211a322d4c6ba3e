"""The one training loop: teacher forcing, accumulation, AMP, clipping, a non-finite guard, periodic
evaluation, metrics, and checkpoints that resume bit-exactly."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from arlm.config import RunConfig
from arlm.data.batches import Batch, BatchSampler
from arlm.data.chat_batches import ChatSampler
from arlm.data.prepare import PreparedData, data_fingerprint
from arlm.errors import ArlmError
from arlm.evaluation.perplexity import EvalResult, evaluate_batches, result
from arlm.interop.checkpoint import (
    Checkpoint,
    checkpoint_dir,
    export_weights,
    latest_checkpoint,
    load_weights_dict,
    prune_checkpoints,
    save_checkpoint,
)
from arlm.interop.lora import base_record, peft_files, same_base
from arlm.model import native
from arlm.model.lora import add_lora, is_adapter_key, target_names
from arlm.model.transformer import Transformer
from arlm.training import distributed as D
from arlm.training.grad_norms import layer_grad_norms
from arlm.training.logging import MetricsLog, Progress, truncate_log
from arlm.training.loss import LossOutput, distillation_loss, next_token_loss
from arlm.training.mfu import mfu, peak_flops
from arlm.training.optim import build_optimizer, lr_at, set_lr


def autocast_context(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast for the forward pass, or nothing for float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


def refuse_other_data(config: RunConfig, checkpoint: Checkpoint) -> None:
    """A resumed run keeps the data settings it trained with (checked before its data folder is looked at)."""
    if checkpoint.meta.get("data_fingerprint") != data_fingerprint(config.data):
        raise ArlmError(
            f"{checkpoint.path} was trained on data prepared with other settings than these; resume without changing "
            "the data settings (they are the run's own), or train a new run"
        )


class Trainer:
    """Owns the model being trained, its optimizer and the run directory's metrics and checkpoints."""

    def __init__(
        self,
        config: RunConfig,
        data: PreparedData,
        model: Transformer,
        *,
        run_dir: str | Path,
        device: torch.device,
        info: D.DistInfo | None = None,
        log: Callable[[str], None] = print,
        teacher: torch.nn.Module | None = None,
    ) -> None:
        self.config, self.tc, self.data = config, config.train, data
        self.run_dir, self.device, self.log = Path(run_dir), device, log
        self.info = info or D.DistInfo()
        tc, world = self.tc, self.info.world_size
        D.check_processes(tc, self.info)
        self.accum = tc.grad_accum // world
        self.global_rows = tc.batch_size * tc.grad_accum
        self.lora_base = self._add_adapters(model) if tc.lora.rank else None  # {reference, sha256} of the base
        self.raw_model = model
        self.teacher = None if teacher is None else teacher.eval().requires_grad_(False)
        self.model = D.wrap_model(model, tc, self.info, device)
        self._loss_model, self._train_loss = self.model, self._forward_loss
        if tc.compile:
            native.prepare_compile()
            self.model = torch.compile(self.model)  # evaluation, scheduled sampling
            if self.info.enabled:  # DDP/FSDP2: the wrapped model compiled, the loss after it
                self._loss_model = self.model
            else:  # one process: forward and loss in one graph, float32 logits never materialised
                self._train_loss = torch.compile(self._forward_loss)
        self.optimizer = build_optimizer(model, tc, device.type)
        self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.log(
            f"training {self.trainable:,} of {model.num_params():,} parameters; AdamW state "
            f"{2 * self.trainable * 4 / 2**20:,.1f} MiB"
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=tc.dtype == "float16")
        self.autocast = autocast_context(device, tc.dtype)
        block, seed = config.model.block_size, tc.seed
        self.train_batches = data.sampler("train", config.data, block, seed)
        self._note_cut(self.train_batches, block)
        self.eval_samplers = {
            s: data.sampler(s, config.data, block, seed) for s in ("val", "test") if data.has_split(s)
        }
        self.eval_samplers["train"] = self.train_batches
        self.token_bytes = data.tokenizer.token_bytes()
        self.flops_per_token = model.flops_per_token(config.model.block_size)
        self.peak = peak_flops(device, tc.dtype, tc.peak_tflops)
        self.step = self.tokens_seen = self.nonfinite_in_a_row = 0
        self.metrics: MetricsLog | None = None
        self.on_checkpoint: Callable[[Path], None] | None = None  # called (rank 0) after each checkpoint
        self._strays_named: set[Path] = set()

    def _note_cut(self, sampler: BatchSampler | ChatSampler, block: int) -> None:
        """Say how much of the training split a row of the context cuts off (padded documents, conversations)."""
        if isinstance(sampler, ChatSampler):
            if sampler.truncated:
                self.log(
                    f"note: {sampler.truncated} training conversations cut to a row of {block + 1} tokens "
                    f"(model.block_size {block}, and the token it predicts): "
                    f"{sampler.cut_targets:,} answer tokens past it are never trained on"
                )
            return
        documents, tokens = sampler.cut()
        if documents:
            self.log(
                f"note: data.mode padded puts one document in a row of {block + 1} tokens: {documents:,} of "
                f"{sampler.num_units:,} training documents are longer, and their {tokens:,} tokens past the row "
                f"({tokens / len(sampler.tokens):.1%} of the split) are never trained on (data.mode packed uses them)"
            )

    def _add_adapters(self, model: Transformer) -> dict[str, str]:
        """Freeze the base model, add LoRA adapters; returns the base's reference and weights hash."""
        base = base_record(self.tc.init, model.state_dict())
        trainable = add_lora(model, self.tc.lora)
        names = ", ".join(sorted(target_names(self.tc.lora)))
        self.log(f"LoRA rank {self.tc.lora.rank} on {names}: {trainable:,} adapter weights")
        return base

    # ------------------------------------------------------------------ resume

    def resume(self, checkpoint: Checkpoint) -> None:
        """Restore weights, optimizer, scaler, RNG and position from a checkpoint, and cut the metrics log."""
        state, tensors = checkpoint.train_state()
        if checkpoint.config.model != self.config.model:
            raise ArlmError(f"{checkpoint.path} holds a model of another shape; resume with its own config")
        refuse_other_data(self.config, checkpoint)
        if state["global_rows"] != self.global_rows:
            raise ArlmError(
                f"{checkpoint.path} used a global batch of {state['global_rows']} rows; this run has "
                f"{self.global_rows} (batch_size x grad_accum); keep it equal to resume exactly"
            )
        weights = self._checkpoint_weights(checkpoint)
        D.load_model_state(self.model, weights, self.tc, self.info, strict=self.lora_base is None)
        D.load_optimizer_state(self.model, self.optimizer, tensors, self.tc, self.info)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self._restore_rng(tensors, state["world_size"])
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.nonfinite_in_a_row = state["nonfinite_in_a_row"]
        if self.info.is_main:
            truncate_log(self.run_dir / "metrics.jsonl", state["metrics_offset"])
        self.log(f"resumed from {checkpoint.path} at step {self.step}")
        self._note_schedule_change(checkpoint.config)

    def _note_schedule_change(self, before: RunConfig) -> None:
        """Say so when this run's learning-rate schedule gives the resumed step another rate than the checkpoint's
        run did (train.max_steps raised: the cosine is drawn over the new count, the rate climbs back up)."""
        old, new = lr_at(self.step, before.train), lr_at(self.step, self.tc)
        if math.isclose(old, new, rel_tol=1e-9, abs_tol=0.0):
            return
        decay = before.train.lr_decay_steps or before.train.max_steps
        self.log(
            f"note: the learning-rate schedule changed: step {self.step + 1} trains at {new:.3g} where the run's "
            f"schedule gave {old:.3g}; --train.lr_decay_steps {decay} keeps its decay"
        )

    def _checkpoint_weights(self, checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
        """The weights to resume: all of them, or (LoRA) the adapters, checked to be of this base and shape."""
        saved = checkpoint.model_state(self.device)
        if self.lora_base is None:
            if "lora_base" in checkpoint.meta:
                raise ArlmError(f"{checkpoint.path} holds LoRA adapters; resume it with its own train.lora")
            return load_weights_dict(self.raw_model, saved)
        before, now = checkpoint.config.train.lora, self.tc.lora
        changed = [k for k in ("rank", "alpha") if getattr(before, k) != getattr(now, k)]  # (dropout may change)
        changed += ["targets"] if set(before.targets) != set(now.targets) else []
        if changed:
            key = changed[0]
            raise ArlmError(
                f"{checkpoint.path} holds adapters trained at train.lora.{key} {getattr(before, key)}, not "
                f"{getattr(now, key)}; resume it with its own train.lora"
            )
        adapters = {k for k in self.raw_model.state_dict() if is_adapter_key(k)}
        if not same_base(checkpoint.meta.get("lora_base"), self.lora_base) or set(saved) != adapters:
            raise ArlmError(f"{checkpoint.path} holds no adapters of this shape for {self.tc.init} as it is now")
        return saved

    def _restore_rng(self, tensors: dict[str, torch.Tensor], saved_world: int) -> None:
        key = f"rng.cpu.rank{self.info.rank}"
        if key not in tensors:
            self.log(f"warning: no RNG state for rank {self.info.rank} (saved with {saved_world} processes)")
            return
        torch.set_rng_state(tensors[key])
        cuda_key = f"rng.cuda.rank{self.info.rank}"
        if self.device.type == "cuda" and cuda_key in tensors:
            torch.cuda.set_rng_state(tensors[cuda_key], self.device)

    # ------------------------------------------------------------------ the loop

    def run(self) -> Path | None:
        """Train until train.max_steps; returns the last checkpoint written."""
        tc = self.tc
        if self.info.is_main:
            tb = self.run_dir / "tensorboard" if tc.tensorboard else None
            self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", tensorboard_dir=tb)
            if self.step:
                self.metrics.write({"event": "resume", "step": self.step})
        progress = Progress(tc.max_steps, desc="train", enabled=None if self.info.is_main else False)
        if tc.eval_at_start and self.step == 0:
            self._log_eval(progress)
        try:
            last_checkpoint = self._steps(progress)
        except KeyboardInterrupt:  # (Ctrl-C: the steps since the newest checkpoint are not kept)
            if self.info.is_main:
                self.log(self._interrupted())
            raise
        progress.close()
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        return last_checkpoint

    def _interrupted(self) -> str:
        """What an interruption keeps: the newest checkpoint, where --resume goes on from."""
        newest = latest_checkpoint(self.run_dir, log=lambda _: None, hashes=False)
        if newest is None:
            return f"interrupted after step {self.step}: no checkpoint yet, nothing of this run is kept"
        return (
            f"interrupted after step {self.step}: the newest checkpoint is {newest.name} "
            f"(--resume --train.out_dir {self.run_dir} goes on from there; train.checkpoint_interval "
            f"{self.tc.checkpoint_interval})"
        )

    def _steps(self, progress: Progress) -> Path | None:
        """Train, log, evaluate and save until train.max_steps; the last checkpoint written."""
        tc = self.tc
        last_checkpoint, window_tokens, window_time = None, 0, 0.0
        while self.step < tc.max_steps:
            start = time.perf_counter()
            record = self.train_step()
            window_time += time.perf_counter() - start
            window_tokens += record["step_tokens"]
            self.step += 1
            progress.update(self.step, self._losses(record, 3))
            if self.step % tc.log_interval == 0 or self.step == tc.max_steps:
                record["tokens_per_s"] = window_tokens / max(window_time, 1e-9)
                if self.peak:
                    world_peak = self.peak * self.info.world_size  # tokens/s counts every process
                    record["mfu"] = mfu(record["tokens_per_s"], self.flops_per_token, world_peak)
                self._log_train(record, progress)
                window_tokens, window_time = 0, 0.0
            if self.step % tc.eval_interval == 0 or self.step == tc.max_steps:
                self._log_eval(progress)
            if (tc.checkpoint_interval and self.step % tc.checkpoint_interval == 0) or self.step == tc.max_steps:
                last_checkpoint = self.save()
        return last_checkpoint

    def train_step(self) -> dict:
        """One optimizer step over grad_accum micro-batches; skipped (and counted) if non-finite."""
        tc, world = self.tc, self.info.world_size
        lr = lr_at(self.step, tc)
        set_lr(self.optimizer, lr)
        parts = self.accum * world
        batches = [
            self.train_batches.batch(self.step, self.global_rows, m * world + self.info.rank, parts)
            for m in range(self.accum)
        ]
        targets, positions = sum(b.num_targets for b in batches), sum(b.x.numel() for b in batches)
        count, positions = D.all_reduce_sum([targets, positions], self.info, self.device)  # over every process
        loss_sum = torch.zeros((), device=self.device)
        nll_sum = torch.zeros((), device=self.device)
        for m, batch in enumerate(batches):
            batch = batch.to(self.device)
            with D.sync_context(self.model, m == self.accum - 1, tc, self.info):
                out = self._micro_step(batch)
                self.scaler.scale(out.loss_sum * (world / count)).backward()
            loss_sum += out.loss_sum.detach()
            nll_sum += out.nll_sum
        self.scaler.unscale_(self.optimizer)
        norms = layer_grad_norms(self.raw_model) if tc.grad_norms else {}
        grad_norm = self._clip_gradients()
        loss, nll = (v / count for v in D.all_reduce_sum([float(loss_sum), float(nll_sum)], self.info, self.device))
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        if tc.dtype == "float16":
            self.scaler.step(self.optimizer)  # skips the update itself when gradients overflowed
            self.scaler.update()
            finite = math.isfinite(loss)
        elif finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._guard(finite, loss, grad_norm)
        if finite:
            self.tokens_seen += int(count)
        return {
            "step": self.step + 1,
            "tokens": self.tokens_seen,
            "train_loss": loss,
            "train_nll": nll,
            "lr": lr,
            "grad_norm": grad_norm,
            "step_tokens": int(positions),  # what the model ran over (throughput, MFU); tokens: the targets
            **({"scheduled_sampling": self.scheduled_sampling_probability()} if tc.scheduled_sampling else {}),
            **norms,
        }

    def _micro_step(self, batch: Batch) -> LossOutput:
        """Forward and loss of one micro-batch: teacher forcing (optionally with scheduled sampling), against
        the targets or, when distilling, against the teacher's distributions."""
        tc = self.tc
        x = self._scheduled_sampling(batch) if tc.scheduled_sampling > 0 else batch.x
        with self.autocast:
            if self.teacher is None:
                return LossOutput(*self._train_loss(x, batch.y, batch.attention_mask))
            logits = self.model(x, attention_mask=batch.attention_mask)  # (B, T, V)
            with torch.no_grad():
                teacher_logits = self.teacher(x, attention_mask=batch.attention_mask)  # (B, T, V)
        return distillation_loss(
            logits, teacher_logits, batch.y, tc.distill_temperature, tc.distill_alpha, tc.label_smoothing
        )

    def _forward_loss(
        self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss_sum, nll_sum, predicted) of ids x (B, T) against targets y (B, T): compiled whole when asked."""
        out = next_token_loss(self._loss_model(x, attention_mask=mask), y, self.tc.label_smoothing)
        return out.loss_sum, out.nll_sum, out.predicted

    def scheduled_sampling_probability(self) -> float:
        """Probability of feeding the model's own prediction at this step (linear warm-up to the final value)."""
        tc = self.tc
        ramp = min(1.0, self.step / tc.scheduled_sampling_warmup) if tc.scheduled_sampling_warmup else 1.0
        return tc.scheduled_sampling * ramp

    def _scheduled_sampling(self, batch: Batch) -> torch.Tensor:
        """Two-pass scheduled sampling: replace input t >= 1 by the model's own greedy prediction of it with
        probability p (the targets stay the gold next tokens)."""
        with torch.no_grad(), self.autocast:
            predicted = self.model(batch.x, attention_mask=batch.attention_mask).argmax(dim=-1)  # (B, T)
        replace = torch.rand(batch.x.shape, device=batch.x.device) < self.scheduled_sampling_probability()
        replace[:, 0] = False
        mixed = batch.x.clone()
        mixed[:, 1:] = torch.where(replace[:, 1:], predicted[:, :-1], batch.x[:, 1:])
        return mixed

    def _clip_gradients(self) -> float:
        max_norm = self.tc.grad_clip if self.tc.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)

    def _guard(self, finite: bool, loss: float, grad_norm: float) -> None:
        if finite:
            self.nonfinite_in_a_row = 0
            return
        self.nonfinite_in_a_row += 1
        if self.metrics is not None:
            self.metrics.write({"event": "nonfinite", "step": self.step + 1, "loss": loss, "grad_norm": grad_norm})
        self.log(f"warning: step {self.step + 1} skipped: loss {loss}, grad norm {grad_norm}")
        if self.nonfinite_in_a_row >= self.tc.max_nonfinite_steps:
            raise ArlmError(
                f"loss or gradients were non-finite for {self.nonfinite_in_a_row} steps in a row (at step "
                f"{self.step + 1}); lower train.lr, set train.grad_clip, or train in float32; checkpoints "
                "already written are intact"
            )

    # ------------------------------------------------------------------ evaluation and logging

    def evaluate(self, split: str, max_batches: int, *, progress: bool = False) -> EvalResult:
        """Mean NLL on a split (batches streamed, shared out across processes), with bits per byte; a
        progress bar on a terminal when asked."""
        sampler = self.eval_samplers[split]
        world, rank, size = self.info.world_size, self.info.rank, self.tc.batch_size
        batches = sampler.eval_batches(size, max_batches, rank=rank, world=world)
        bar = None
        if progress:
            total = sampler.eval_batch_count(size, max_batches, rank=rank, world=world)
            bar = Progress(total, desc=f"eval {split}", enabled=None if self.info.is_main else False, leave=False)
            batches = bar.iterate(batches)
        sums = evaluate_batches(
            self.model, batches, device=self.device, autocast=self.autocast, token_bytes=self.token_bytes
        )
        if bar is not None:
            bar.close()
        return result(*D.all_reduce_sum(list(sums), self.info, self.device))

    def _log_train(self, record: dict, progress: Progress) -> None:
        record = {k: v for k, v in record.items() if k != "step_tokens"}
        if self.metrics is not None:
            self.metrics.write(record)
        if not progress.enabled and self.info.is_main:
            self.log(
                f"step {record['step']:>6}  {self._losses(record, 4)}  lr {record['lr']:.2e}  "
                f"grad {record['grad_norm']:.2f}  {record['tokens_per_s']:,.0f} tok/s"
                + (f"  MFU {record['mfu']:.1%}" if record.get("mfu") else "")
            )

    def _losses(self, record: dict, digits: int) -> str:
        """The step's NLL as "loss" (the figure evaluation reports), and the objective beside it as "objective" where
        label smoothing or a teacher makes them differ."""
        nll = f"{record['train_nll']:.{digits}f}"
        if not self.tc.label_smoothing and self.teacher is None:
            return f"loss {nll}"
        return f"nll {nll}  objective {record['train_loss']:.{digits}f}"

    def _log_eval(self, progress: Progress) -> None:
        splits = ["val"] if "val" in self.eval_samplers else ["train"]
        results = {s: self.evaluate(s, self.tc.eval_batches) for s in splits}
        record = {"step": self.step, "tokens": self.tokens_seen}
        for split, res in results.items():
            record.update(res.as_dict(f"{split}_"))
        if self.metrics is not None:
            self.metrics.write(record)
        progress.clear()
        if self.info.is_main:
            shown = ", ".join(f"{s} loss {r.loss:.4f} (ppl {r.perplexity:.2f})" for s, r in results.items())
            self.log(f"step {self.step}: {shown}")

    # ------------------------------------------------------------------ checkpoints

    def save(self) -> Path | None:
        """Write a checkpoint (rank 0), keep the newest train.keep_checkpoints."""
        weights = D.full_model_state(self.model, self.tc, self.info)
        if self.lora_base is not None:  # the adapters only; the base is named and hashed in the meta
            weights = {k: v for k, v in weights.items() if is_adapter_key(k)}
        tensors = D.full_optimizer_state(self.model, self.optimizer, self.tc, self.info)
        tensors.update(self._rng_tensors())
        path = None
        if self.info.is_main:
            state = {
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "world_size": self.info.world_size,
                "global_rows": self.global_rows,
                "nonfinite_in_a_row": self.nonfinite_in_a_row,
                "metrics_offset": self.metrics.offset() if self.metrics else 0,
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            }
            meta = {
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "data_fingerprint": data_fingerprint(self.config.data),
                **({"data_sources": self.data.meta["sources"]} if self.data.meta.get("sources") else {}),
                **({"lora_base": self.lora_base} if self.lora_base else {}),
            }
            weights = export_weights(weights, self.config.model)
            path = save_checkpoint(
                checkpoint_dir(self.run_dir, self.step),
                weights=weights,
                tokenizer=self.data.tokenizer,
                config=self.config,
                meta=meta,
                state=state,
                state_tensors=tensors,
                extra_files=peft_files(weights, self.config) if self.lora_base else None,
            )
            self._prune(meta["data_fingerprint"])
            if self.on_checkpoint is not None:
                self.on_checkpoint(path)
        D.barrier(self.info)
        return path

    def _prune(self, fingerprint: str) -> None:
        """Keep the newest train.keep_checkpoints; name (once) a step-* folder that is not one of ours."""
        strays = prune_checkpoints(self.run_dir, self.tc.keep_checkpoints, data_fingerprint=fingerprint)
        for stray in sorted(set(strays) - self._strays_named):
            self.log(f"warning: ignoring {stray}: not an intact checkpoint of this run, so never pruned")
        self._strays_named.update(strays)

    def _rng_tensors(self) -> dict[str, torch.Tensor]:
        states = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        gathered = [states]
        if self.info.enabled:
            gathered = [None] * self.info.world_size
            dist.all_gather_object(gathered, states)
        return {f"rng.{kind}.rank{r}": t.cpu() for r, s in enumerate(gathered) for kind, t in s.items()}
