"""A training step reads from the device once: the step's values and the ranks' agreement (non-finite, stop,
records) come back together, so a GPU's queue is not drained once per loss term and per check.

On a CPU every read of a tensor's value by the host goes through ``item``, ``tolist`` or a conversion to a Python
number or truth value: counted here during ``Trainer.train_step`` (the CUDA counterpart, with
``torch.cuda.set_sync_debug_mode``, is in ``tests/test_cuda.py``). Before, a step of every term read 2 + 1 per
value.
"""

import torch
from dist_worker import config

from clipkd.commands.train import make_trainer
from clipkd.data.stream import DataPosition

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


def _counted(monkeypatch):
    calls = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return calls


def test_a_step_reads_the_device_once(data_dir, tmp_path, monkeypatch):
    """Three steps of every term from the stream's batches (views made on the device): one read each, and the
    values it returns are the loss and each term (floats)."""
    trainer = make_trainer(config(tmp_path / "run", data_dir, **{"optim.steps": 4, "data.preprocess": "device"}))
    trainer.distiller.student.encoder.trim_text = False  # on a CPU the trimmed tower reads its width (see below)
    trainer.stream.start(DataPosition(), endless=True)
    batches = [b for (b, _), _ in zip(iter(trainer.stream), range(3))]
    trainer.train_step([batches[0]])
    calls = _counted(monkeypatch)
    for batch in batches[1:]:
        before = len(calls)
        values = trainer.train_step([batch])
        assert calls[before:] == ["tolist"]
        assert "loss" in values and all(isinstance(v, float) for v in values.values())
    monkeypatch.undo()
    assert not trainer.agreed.nonfinite


def test_the_students_tokens_are_cut_on_the_host(data_dir, tmp_path, monkeypatch):
    """The trainer hands the student its tokens cut after the longest caption's end-of-text token (computed here
    from the tokens), so a causal tower on a GPU runs that width without reading it back from the device."""
    trainer = make_trainer(config(tmp_path / "run", data_dir, **{"optim.steps": 2}))
    trainer.stream.start(DataPosition(), endless=True)
    (batch, _), = [b for b, _ in zip(iter(trainer.stream), range(1))]
    full = batch.student_text
    eot = full.argmax(dim=-1)  # open_clip's end-of-text token has the largest id
    seen = []
    encode = trainer.distiller.student.encoder.encode_text
    monkeypatch.setattr(trainer.distiller.student.encoder, "encode_text",
                        lambda text, **kw: (seen.append(tuple(text.shape)), encode(text, **kw))[1])
    trainer.train_step([batch])
    assert full.shape[1] > int(eot.max()) + 1 and set(seen) == {(len(full), int(eot.max()) + 1)}
