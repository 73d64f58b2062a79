"""mixweight's sample weights inside transformers.Trainer."""

import copy

import torch
from transformers import TrainingArguments

from mixweight.core.distributed import World
from mixweight.core.model import build_model
from mixweight.data.manifest import load_manifest
from mixweight.data.streams import read_stream
from mixweight.hf import ReweightingTrainer
from mixweight.train.step import accumulate_gradients
from mixweight.train.step_weighting import SampleWeightingStep
from mixweight.weighting import SampleWeighting


class _Blocks(torch.utils.data.Dataset):
    def __init__(self, blocks):
        self.blocks = blocks

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, i):
        return {"input_ids": self.blocks[i]}


def _collate(items):
    return {"input_ids": torch.stack([item["input_ids"] for item in items])}


def _blocks(corpus):
    manifest = load_manifest(corpus)
    parts = [torch.from_numpy(read_stream(manifest.stream_dir(corpus, "train", d), limit=4)) for d in manifest.domains]
    return manifest, torch.cat(parts)


def _trainer(model, blocks, out, **weighting):
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=8,
        max_steps=4,
        learning_rate=3e-3,
        report_to=[],
        save_strategy="no",
        logging_steps=1000,
        use_cpu=True,
        remove_unused_columns=False,
        seed=0,
        dataloader_num_workers=0,
    )
    return ReweightingTrainer(
        model=model, args=args, train_dataset=_Blocks(blocks), data_collator=_collate, **weighting
    )


def test_reweighting_trainer_trains_a_tiny_model(synth_corpus, tiny_spec, tmp_path):
    manifest, blocks = _blocks(synth_corpus)
    model = build_model(tiny_spec, manifest, seed=0)
    before = copy.deepcopy(model.state_dict())
    trainer = _trainer(model, blocks, tmp_path / "hf", sample_weighting="linupper", r=0.4)
    output = trainer.train()
    assert output.global_step == 4 and torch.isfinite(torch.tensor(output.training_loss))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    weights = trainer.last_weights
    assert abs(weights.sum().item() - 1) < 1e-6
    assert weights.max() > weights.min()  # LinUpper really reweights


def test_reweighting_trainer_gives_the_trainers_weights(synth_corpus, tiny_spec, tmp_path):
    manifest, blocks = _blocks(synth_corpus)
    batch = {"input_ids": blocks[:8], "domain": torch.zeros(8, dtype=torch.long)}
    model = build_model(tiny_spec, manifest, seed=0)
    trainer = _trainer(model, blocks, tmp_path / "hf", sample_weighting="extremes", r=0.5, weight_cap=2.0)
    trainer.compute_loss(model, {"input_ids": batch["input_ids"]})
    reduction = SampleWeightingStep(SampleWeighting("extremes", 0.5, cap=2.0))
    ours = accumulate_gradients(copy.deepcopy(model), [batch], reduction, step=0, world=World())
    torch.testing.assert_close(trainer.last_weights, ours.weights)
