"""sertrain: multi-task CNN + attention-BLSTM speech emotion recognition on serprep stores.

Modules:
- :mod:`sertrain.config`     one TOML config (model, loss, training) with named presets
- :mod:`sertrain.data`       torch Dataset / samplers over :class:`serprep.store.StoreReader`
- :mod:`sertrain.model`      CNN -> BLSTM -> masked attention -> shared embedding -> heads
- :mod:`sertrain.metrics`    utterance-level WA, UA, macro-F1, confusion, by-gender metrics
- :mod:`sertrain.checkpoint` ``torch.load(weights_only=True)``-safe checkpoints
- :mod:`sertrain.train`      one fold (early stopping, resume, AMP) and cross-validation
- :mod:`sertrain.distributed` one fold over several processes (torchrun, DDP)
- :mod:`sertrain.parallel`  independent cv runs side by side (``cv --parallel/--devices``)
- :mod:`sertrain.evaluate`   segment posteriors -> utterance decisions -> metrics / reports
- :mod:`sertrain.predict`    class probabilities for new audio files
- :mod:`sertrain.cli`        the ``sertrain`` command
"""

__version__ = "0.5.0"
