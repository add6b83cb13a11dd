"""Step 5 — train a model on the train split, validate on val, keep the best epoch.

One configuration object, ``TrainConfig``, holds every setting of a training run — the input (notebook
03), the model (notebook 04) and the training itself (notebook 05) — and ``train(config, work_dir)`` runs
it. The notebooks, the runner and the benchmarks all train through this one function.

``train`` writes into the work folder:

- ``models/<run>/`` — this run's ``model.keras`` (the best epoch by ``config.monitor``), ``model.json``
  (its ``models.ModelRecord``), ``history.csv`` (one row per epoch) and ``train.json`` (the config
  verbatim, counts, timings, the precision used). Every trained model keeps its own folder.
- ``model.keras``, ``model.json``, ``history.csv``, ``train.json`` at the top of the work folder — copies
  of the latest run, which notebooks 06 and 07 and ``predict`` use. The model they replace stays in its
  own ``models/<run>/`` folder (one trained before this scheme is moved there first), and ``train``
  says where.
- ``train_progress.jsonl`` — one JSON line per finished epoch (the runner shows it as progress).

A pretrained model (one registered with a ``backbone``, e.g. ``fer_transfer``) is fine-tuned in two
phases that share the model in memory: ``head_epochs`` with the backbone frozen, then ``epochs`` of the
whole model at ``learning_rate × whole_model_lr_factor``. The best epoch over both phases is kept.

Speed on CPU: the input pipeline is cached and prefetched (``fer_utils.pipelines``); on CPUs with
bfloat16 instructions ``precision="auto"`` builds the seed CNN under Keras' ``mixed_bfloat16`` policy
(about twice as fast); outputs stay float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fer_utils import EMOTIONS, models, pipelines
from fer_utils.workfolder import (
    BACKUP_DIR,
    HISTORY,
    MODEL_FILE,
    MODEL_RECORD,
    MODELS_DIR,
    TRAIN_PROGRESS,
    TRAIN_RECORD,
    display_path,
    sha256_of,
    write_record,
)

CLASS_WEIGHTS = ("sqrt", "balanced")
STRATEGIES = ("default", "mirrored", "multi_worker")
MONITORS = ("val_accuracy", "val_loss", "val_macro_f1", "val_balanced_accuracy")
LR_SCHEDULES = ("constant", "cosine")


# --------------------------------------------------------------------------------------------------
# The configuration
# --------------------------------------------------------------------------------------------------


#: The largest batch and number of epochs a configuration takes: beyond them a value is a typo, and TensorFlow
#: would stop with a traceback (its counters are 32-bit) after the run had started.
MAX_BATCH_SIZE = 65_536
MAX_EPOCHS = 100_000


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run. ``train.json`` records it verbatim; ``model.json`` keeps a copy.

    Notebook 03 chooses the input fields, notebook 04 the model fields, notebook 05 the training
    fields (its parameters are these names, one to one).
    """

    # the input (notebook 03)
    image_size: int | tuple[int, int] = 64  # faces are resized to this (height, width)
    color_mode: str = "grayscale"  # "grayscale" or "rgb"
    interpolation: str = "bilinear"  # tf.image.resize method ("area" averages pixels when shrinking)
    # the model (notebook 04)
    model: str = "fer_transfer"  # a name from models.available()
    model_kwargs: dict = dataclasses.field(default_factory=dict)  # extra arguments of the model's builder
    precision: str = "auto"  # "auto", "float32", "bf16" or "fp16" (the dtype policy the model is built in)
    # training (notebook 05)
    epochs: int = 12  # epochs of the whole model (after the head epochs)
    head_epochs: int = 2  # epochs training only a pretrained model's new head first (models without a
    #   pretrained backbone have no head phase: for them it is always 0)
    batch_size: int = 64
    learning_rate: float = 1e-3  # Adam's step size (the head phase, or the only phase)
    whole_model_lr_factor: float = 0.5  # the whole-model phase after head epochs runs at learning_rate × this
    lr_schedule: str = "constant"  # "constant" or "cosine" (decay to 0 over each phase)
    weight_decay: float = 0.0  # > 0: AdamW with this decoupled weight decay
    class_weight: str | float | None = "sqrt"  # None, "sqrt", "balanced", or the power p of (N / (K n_c)) ** p
    augment: str = "standard"  # "none", "standard" or "strong" (pipelines.AUGMENT_LEVELS)
    mixup: float = 0.0  # > 0: mixup with Beta(mixup, mixup) per batch (tf.data only)
    label_smoothing: float = 0.0  # label smoothing of the loss
    focal_gamma: float = 0.0  # > 0: focal loss with this gamma instead of cross-entropy (0: cross-entropy)
    tta: str = "none"  # "none" or "flip": test-time augmentation that validation, evaluation and prediction use
    monitor: str = "val_accuracy"  # which validation figure picks the kept epoch (MONITORS)
    pipeline: str = "tf.data"  # "tf.data" or "generator" (the seed's ImageDataGenerator)
    strategy: str = "default"  # tf.distribute: "default" (one device), "mirrored" (this machine's GPUs or
    #   logical CPUs), "multi_worker" (a cluster named by $TF_CONFIG); batch_size is per replica
    seed: int = 42

    def __post_init__(self):
        wrong = [f"{name}={getattr(self, name)!r} ({kind})" for name, kind in self._kinds().items()
                 if not _is_kind(getattr(self, name), kind)]
        if wrong:  # before any comparison: -p epochs abc must not end in a TypeError
            raise ValueError("Bad training configuration: " + "; ".join(wrong) + ".")
        for name, kind in self._kinds().items():  # one spelling per value: -p mixup 1 is recorded as 1.0
            if kind != "a string":
                setattr(self, name, (int if kind == "an integer" else float)(getattr(self, name)))
        size = self.image_size
        if not (_is_kind(size, "an integer") or (isinstance(size, (tuple, list)) and len(size) == 2
                                                  and all(_is_kind(s, "an integer") for s in size))) \
                or min(pipelines.size_pair(size)) < 8:
            raise ValueError(f"Bad training configuration: image_size={size!r} (a number of pixels of at least 8, "
                             "or a (height, width) pair).")
        self.image_size = pipelines.size_pair(self.image_size)
        if self.model in models.available() and not models.traits(self.model).get("backbone"):
            self.head_epochs = 0  # the rule, in this one place: no pretrained backbone, no head phase
        problems = []
        if self.color_mode not in models.COLOR_MODES:
            problems.append(f"color_mode={self.color_mode!r} (one of {sorted(models.COLOR_MODES)})")
        if self.interpolation not in models.INTERPOLATIONS:
            problems.append(f"interpolation={self.interpolation!r} (one of {models.INTERPOLATIONS})")
        if self.model not in models.available():
            problems.append(f"model={self.model!r} (registered: {', '.join(models.available())})")
        if self.epochs < 0 or self.head_epochs < 0 or self.epochs + self.head_epochs < 1:
            problems.append(f"epochs={self.epochs}, head_epochs={self.head_epochs} (at least one epoch in all)")
        for name in ("batch_size", "learning_rate", "whole_model_lr_factor"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)!r} (must be positive)")
        if self.batch_size > MAX_BATCH_SIZE:  # TensorFlow takes at most a 32-bit count; no machine holds more faces
            problems.append(f"batch_size={self.batch_size!r} (at most {MAX_BATCH_SIZE:,} faces a step)")
        if self.epochs + self.head_epochs > MAX_EPOCHS:
            problems.append(f"epochs={self.epochs}, head_epochs={self.head_epochs} (at most {MAX_EPOCHS:,} in all)")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule={self.lr_schedule!r} (one of {LR_SCHEDULES})")
        if not (self.class_weight is None or self.class_weight in CLASS_WEIGHTS
                or (isinstance(self.class_weight, (int, float)) and not isinstance(self.class_weight, bool)
                    and math.isfinite(self.class_weight) and self.class_weight >= 0)):
            problems.append(f"class_weight={self.class_weight!r} (None, 'sqrt', 'balanced' or a power >= 0)")
        try:
            self.augment = pipelines.augment_level(self.augment)
        except ValueError as err:
            problems.append(str(err))
        if self.mixup < 0 or not 0 <= self.label_smoothing < 1 or self.weight_decay < 0:
            problems.append("mixup and weight_decay must be >= 0, label_smoothing in [0, 1)")
        if not 0 <= self.focal_gamma <= 10:  # a finite number already (_kinds)
            problems.append(f"focal_gamma={self.focal_gamma!r} (0 for cross-entropy, or a focal loss's gamma "
                            "up to 10; 2 is usual)")
        if self.tta not in models.TTA_MODES:
            problems.append(f"tta={self.tta!r} (one of {models.TTA_MODES})")
        if self.monitor not in MONITORS:
            problems.append(f"monitor={self.monitor!r} (one of {MONITORS})")
        if self.pipeline not in ("tf.data", "generator"):
            problems.append(f"pipeline={self.pipeline!r} ('tf.data' or 'generator')")
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy={self.strategy!r} (one of {STRATEGIES})")
        elif self.strategy != "default" and self.pipeline != "tf.data":
            problems.append(f"strategy={self.strategy!r} needs pipeline='tf.data' (tf.distribute shards tf.data "
                            "datasets, not the generator)")
        if self.pipeline == "generator":  # what the seed's ImageDataGenerator cannot do, said before any work
            if self.mixup:
                problems.append("mixup needs pipeline='tf.data' (the legacy generator cannot mix batches)")
            try:
                pipelines.check_legacy_options(self.color_mode, self.augment, self.interpolation)
            except ValueError as err:
                problems.append(str(err).rstrip("."))
        if problems:
            raise ValueError("Bad training configuration: " + "; ".join(problems) + ".")

    #: Fields that several kinds of value fit (``class_weight``: None, a name or a power): checked by value only.
    CHECKED_BY_VALUE = ("augment", "class_weight", "image_size")

    @classmethod
    def _kinds(cls) -> dict[str, str]:
        """What each plain field must be, from its default: "an integer", "a number" or "a string"."""
        kinds = {}
        for f in dataclasses.fields(cls):
            default = f.default
            if f.name in cls.CHECKED_BY_VALUE or isinstance(default, bool):
                continue  # checked by value
            if isinstance(default, int):
                kinds[f.name] = "an integer"
            elif isinstance(default, float):
                kinds[f.name] = "a finite number"
            elif isinstance(default, str):
                kinds[f.name] = "a string"
        return kinds

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (*self.image_size, models.COLOR_MODES[self.color_mode])

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "image_size": list(self.image_size)}

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from a dict (e.g. ``train.json``'s ``"config"``); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"Unknown TrainConfig field(s) {sorted(unknown)}; known: {sorted(names)}.")
        return cls(**values)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    #: The fields a built model fixes (notebooks 03 and 04): training cannot change them.
    MODEL_FIELDS = ("image_size", "color_mode", "interpolation", "model", "precision", "model_kwargs")

    @classmethod
    def from_model_record(cls, record: models.ModelRecord, **changes) -> TrainConfig:
        """The config that trains the model ``record`` describes (e.g. notebook 04's ``untrained.json``), with
        ``changes`` to the training fields. A change to what the model fixes (``MODEL_FIELDS``) that differs
        from the record is refused with a ``ValueError`` naming the value, before anything is built."""
        fixed = {"image_size": pipelines.size_pair(record.image_size), "color_mode": record.color_mode,
                 "interpolation": record.interpolation, "model": record.model, "precision": record.precision,
                 "model_kwargs": record.config.get("model_kwargs", {})}
        for name, value in changes.items():
            if name in fixed and (pipelines.size_pair(value) if name == "image_size" else value) != fixed[name]:
                raise ValueError(f"{name}={value!r} contradicts the model being trained, built with "
                                 f"{name}={fixed[name]!r}: build the model again with it (notebook 04, or "
                                 "notebook 03 for the input), or leave it out")
        return cls.from_dict({**fixed, **changes})

    def to_parameters(self) -> list[str]:
        """This config as ``-p NAME VALUE`` arguments (the fields that differ from the defaults), for
        ``python -m fer_utils train`` on each worker of a cluster: ``TrainConfig(**parsed) == self``."""
        default = TrainConfig(model=self.model).to_dict()
        out = []
        for name, value in self.to_dict().items():
            if name == "model" or value != default[name]:
                out += ["-p", name, repr(tuple(value)) if name == "image_size" else
                        value if isinstance(value, str) else repr(value)]
        return out

    def model_record(self, **extra) -> models.ModelRecord:
        """The ``ModelRecord`` of a model built from this config (``extra`` fills in the rest)."""
        return models.ModelRecord(model=self.model, image_size=self.image_size, color_mode=self.color_mode,
                                  interpolation=self.interpolation, tta=self.tta, config=self.to_dict(), **extra)


def _is_kind(value, kind: str) -> bool:
    if isinstance(value, bool):
        return False
    if kind == "an integer":
        return isinstance(value, (int, np.integer))
    if kind == "a finite number":  # nan and inf are floats, but train nothing (a nan rate gives a nan model)
        return isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value)
    return isinstance(value, str)


def device_summary() -> str:
    """Where training runs: ``"1 GPU (NVIDIA H100 80GB HBM3)"`` or ``"CPU only (2 cores)"``."""
    import fer_utils

    tf, _ = fer_utils.import_tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return f"CPU only ({os.cpu_count()} cores)"
    names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
    return f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''} ({', '.join(names)})"


# --------------------------------------------------------------------------------------------------
# More than one device: tf.distribute
# --------------------------------------------------------------------------------------------------

_MIRRORED = {}


def get_strategy(name: str = "default"):
    """The ``tf.distribute`` strategy called ``name`` (``STRATEGIES``), made once per process.

    - ``"default"``: TensorFlow's default strategy (one device; what you get without asking).
    - ``"mirrored"``: ``MirroredStrategy`` over this machine's GPUs, or, without GPUs, its logical CPU
      devices (``$FER_LOGICAL_CPUS=2`` splits the CPU in two before TensorFlow starts).
    - ``"multi_worker"``: ``MultiWorkerMirroredStrategy`` over the cluster in ``$TF_CONFIG``; it is created
      when TensorFlow starts (``fer_utils.import_tensorflow``), because collective ops cannot be set up later. A
      ``$TF_CONFIG`` that names no usable cluster is a ``ValueError`` saying what is wrong in it
      (``cluster.check_tf_config``), before TensorFlow reads it.
    """
    import fer_utils

    if name == "multi_worker":  # asked for before TensorFlow starts: import_tensorflow joins the cluster
        if os.environ.get("TF_CONFIG") and not fer_utils.STARTUP["started"]:
            from fer_utils import cluster

            cluster.check_tf_config()  # a ValueError naming what is wrong in it, before TensorFlow reads it
        fer_utils.STARTUP["multi_worker_wanted"] = True
    tf, _ = fer_utils.import_tensorflow()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if fer_utils.STARTUP["logical_cpus_error"]:
            raise ValueError(f"strategy='mirrored': {fer_utils.STARTUP['logical_cpus_error']}")
        if "mirrored" not in _MIRRORED:
            _MIRRORED["mirrored"] = mirrored_strategy()  # notebook 08 shows it
        return _MIRRORED["mirrored"]
    if name == "multi_worker":
        if fer_utils.STARTUP["multi_worker"] is not None:
            return fer_utils.STARTUP["multi_worker"]
        if fer_utils.STARTUP["error"]:
            raise RuntimeError(f"strategy='multi_worker': the cluster in $TF_CONFIG could not be joined "
                               f"({fer_utils.STARTUP['error']}). Check TF_CONFIG's addresses and that every worker "
                               "runs the same command.")
        if os.environ.get("TF_CONFIG"):
            raise RuntimeError("strategy='multi_worker': TensorFlow started in this process before the cluster in "
                               "$TF_CONFIG was asked for. Call training.get_strategy('multi_worker') before anything "
                               "else uses TensorFlow, or run `python -m fer_utils train -p strategy multi_worker`.")
        raise RuntimeError("strategy='multi_worker' needs a cluster: set TF_CONFIG on every worker and start "
                           "each with the same command, e.g. `python -m fer_utils train --work-dir W -p strategy "
                           "multi_worker` (README: 'Train on more devices or a cluster').")
    raise ValueError(f"strategy={name!r} (one of {STRATEGIES})")


def worker_info(strategy) -> dict:
    """Who this process is in ``strategy``'s cluster: task name, whether it is the chief (the one that writes
    the model and records), how many workers, replicas and which devices."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None) if resolver is not None else None
    if task_type:
        cluster = resolver.cluster_spec().as_dict()
        task_id = int(resolver.task_id or 0)
        chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in cluster)
        workers = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))
        task = f"{task_type}-{task_id}"
    else:
        chief, workers, task = True, 1, "local"
    try:
        devices = list(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy: whatever device TensorFlow places ops on
        devices = []
    return {"task": task, "chief": chief, "workers": workers, "replicas": int(strategy.num_replicas_in_sync),
            "devices": [d.split("/device:")[-1] for d in devices] or ["default"]}


def memory_info() -> dict:
    """Peak memory of this process so far: resident CPU memory and, per GPU, TensorFlow's peak allocation (MB)."""
    import resource

    import fer_utils

    tf, _ = fer_utils.import_tensorflow()
    info = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    for gpu in tf.config.list_logical_devices("GPU"):
        peak = tf.config.experimental.get_memory_info(gpu.name.split("device:")[-1])["peak"]
        info[f"{gpu.name.split('device:')[-1]}_peak_mb"] = round(peak / 2**20, 1)
    return info


def _into_scope(model, strategy):
    """A copy of ``model`` whose variables are created in ``strategy``'s scope (one per device)."""
    import fer_utils

    _, keras = fer_utils.import_tensorflow()
    with strategy.scope():
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
    return copy


#: The Keras versions the tf.distribute workarounds below were written for and checked with.
KERAS_MULTI_WORKER_FIXED_FOR = "3.15."


def _distributed_fixes(net, strategy, multi_worker: bool):
    """Work around Keras 3.15 with more than one replica (``MirroredStrategy``, ``MultiWorkerMirroredStrategy``:
    keras-team/keras#20585), for this model and while a run lasts; returns the function that undoes them
    (``finish`` calls it).

    1. Before its first step, ``fit`` (and ``evaluate``, for the validation data) averages the first distributed
       batch with ``strategy.reduce`` only to learn its shapes. That reduce adds the replicas' batches element by
       element, so it fails whenever they differ in size: a split smaller than one global batch whose faces do
       not divide evenly over the replicas (33 validation faces over two replicas: 17 and 16, "AddN ... must have
       the same size and shape"), and between workers always. Build from this process's first replica's batch
       instead: the shapes are all the build needs, and every replica, however many faces it got, then trains.
    2. Multi-worker only: each step's loss and metrics (scalars) are averaged over workers with ``axis=0``,
       which a scalar does not have: average them with ``axis=None`` (what that reduce means for a scalar).

    Both reach into Keras' private API, so they are checked against the running Keras first: another version,
    or a missing name, is a clear error rather than a silent change of how training reduces.
    """
    import fer_utils

    tf, keras = fer_utils.import_tensorflow()
    from keras.src.backend.tensorflow import trainer

    needed = {"model._symbolic_build": hasattr(net, "_symbolic_build"),
              "model._maybe_symbolic_build": hasattr(net, "_maybe_symbolic_build")}
    if multi_worker:
        needed.update({
            "trainer.reduce_per_replica": hasattr(trainer, "reduce_per_replica"),
            "trainer._collective_all_reduce_multi_worker": hasattr(trainer, "_collective_all_reduce_multi_worker"),
            "trainer._is_per_replica_instance": hasattr(trainer, "_is_per_replica_instance")})
    missing = [name for name, present in needed.items() if not present]
    if missing or not keras.__version__.startswith(KERAS_MULTI_WORKER_FIXED_FOR):
        name = "multi_worker" if multi_worker else "mirrored"
        raise RuntimeError(
            f"strategy={name!r} works around keras-team/keras#20585 through the private API of Keras "
            f"{KERAS_MULTI_WORKER_FIXED_FOR}x, and this is Keras {keras.__version__}"
            + (f", which lacks {', '.join(missing)}" if missing else "")
            + ": install the pinned keras (pyproject.toml), or check whether that issue is fixed in this version "
            "and update fer_utils.training._distributed_fixes.")
    build = net._symbolic_build

    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]  # the first replica's share is never the smallest
        return value

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = keras.tree.map_structure(local, next(it))
                break
        with strategy.scope():
            build(data_batch=data_batch)

    net._maybe_symbolic_build = maybe_symbolic_build
    original = trainer.reduce_per_replica
    if multi_worker:
        def reduce_per_replica(values, strategy, reduction):
            if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
                return keras.tree.map_structure(
                    lambda v: strategy.reduce("MEAN", v, axis=None) if trainer._is_per_replica_instance(v) else v,
                    values)
            return original(values, strategy, reduction)

        trainer.reduce_per_replica = reduce_per_replica

    def undo() -> None:
        trainer.reduce_per_replica = original
        net.__dict__.pop("_maybe_symbolic_build", None)

    return undo


def _shard_by_data(batches: dict) -> dict:
    """Each worker takes every n-th batch (``AutoShardPolicy.DATA``): the class-folder datasets are made from
    a list of files in memory, so there are no input files to split between workers."""
    import fer_utils

    tf, _ = fer_utils.import_tensorflow()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return {k: b.with_options(options) for k, b in batches.items()}


def replica_batches(faces: int, global_batch: int, replicas: int, split: str = "train") -> list[int] | None:
    """The batch sizes that give each of ``replicas`` mirrored replicas faces in every step, or None when plain
    batching does (``_no_empty_replica``); ``ValueError`` when no batching can, saying what to use.

    Replicas on one machine split each global batch between them, so a last batch with fewer faces than replicas
    (17 faces, global batch 16: 1 + 0) leaves a replica an empty batch, and TensorFlow 2.21's oneDNN convolution
    (seen on Intel Xeon) returns the wrong shape for an empty batch ("input depth must be evenly divisible by
    filter depth: 1 vs 32"). Such a remainder joins the batch before it. After that ``rebatch`` TensorFlow no
    longer knows the batch size and cuts every batch into pieces of ``ceil(n / replicas)`` faces: a per-replica
    batch so small that the merged batch still leaves a replica none (4 replicas of 2 faces, 9 faces: 3 + 3 + 3
    + 0) is refused. A split with fewer faces than one global batch is left as it is."""
    last = faces % global_batch
    if replicas < 2 or faces <= global_batch or last == 0 or last >= replicas:
        return None
    sizes = [global_batch] * (faces // global_batch - 1) + [global_batch + last]
    if (replicas - 1) * -(-sizes[-1] // replicas) >= sizes[-1]:
        raise ValueError(f"batch_size {global_batch // replicas} over {replicas} replicas: the last {split} batch "
                         f"({sizes[-1]} faces) would leave a replica no face, which TensorFlow's oneDNN convolution "
                         f"cannot take; use -p batch_size {replicas} or more")
    return sizes


def _no_empty_replica(batches: dict, counts: dict, global_batch: int, replicas: int) -> dict:
    """``batches`` rebatched as ``replica_batches`` says (every face still seen once per epoch, in the same
    order); a pipeline whose batches are not what the split's face count implies is left as it is."""
    import fer_utils

    tf, _ = fer_utils.import_tensorflow()
    out = dict(batches)
    for split, ds in batches.items():
        faces = counts.get(split, 0)
        sizes = replica_batches(faces, global_batch, replicas, split)
        if sizes is None or int(ds.cardinality()) != -(-faces // global_batch):
            continue
        out[split] = ds.rebatch(tf.constant(sizes, tf.int64)).apply(
            tf.data.experimental.assert_cardinality(len(sizes))).prefetch(tf.data.AUTOTUNE)
    return out


def _backup_dir(work: Path, config: TrainConfig, net, worker: dict) -> Path:
    """``<work>/.backup/<key>/<task>/``: the key changes with the config, the model and the cluster, so an
    interrupted run resumes only into the same run; every worker keeps its own files."""
    import hashlib

    fingerprint = json.dumps([config.to_dict(), int(net.count_params()), worker["workers"], worker["replicas"]],
                             sort_keys=True, default=str)
    return work / BACKUP_DIR / hashlib.sha1(fingerprint.encode()).hexdigest()[:12] / worker["task"]


def build_model(config: TrainConfig):
    """Build ``config.model`` for ``config.input_shape`` in its precision (``models.model_precision``)."""
    policy = models.model_precision(config.model, config.precision)
    with models.precision_policy(policy):
        return models.build(config.model, config.input_shape, len(EMOTIONS), **config.model_kwargs)


# --------------------------------------------------------------------------------------------------
# Class weights
# --------------------------------------------------------------------------------------------------


# ---- generated from notebooks/05_train_model.ipynb, cell 05-n03 ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
def class_weight_power(counts, power: float = 0.5) -> dict[int, float]:
    """Per-class weights ``(N / (K n_c)) ** power``, rescaled so the mean weight per
    training face is 1.

    ``power=0``: none; ``0.5``: square-root ("soft") balancing; ``1``: full
    balancing. Empty classes get 0.
    """
    # n_c: training faces per class; N = counts.sum(), K = len(counts)
    counts = np.asarray(counts, dtype=float)
    weights = np.where(
        counts > 0, (counts.sum() / (len(counts) * np.maximum(counts, 1))) ** power, 0.0
    )
    # an average face still weighs 1
    weights = weights * counts.sum() / (weights * counts).sum()
    return {i: float(w) for i, w in enumerate(weights)}


def class_weights(config, counts) -> dict[int, float] | None:
    """The ``class_weight`` dict ``model.fit`` gets for ``config.class_weight`` and
    the training counts."""
    if config.class_weight is None:
        return None
    if config.class_weight == "balanced":
        return balanced_class_weight(counts)
    power = 0.5 if config.class_weight == "sqrt" else float(config.class_weight)
    return class_weight_power(counts, power)
# ---- end of generated code (notebooks/05_train_model.ipynb, cell 05-n03) ----


def balanced_class_weight(counts, max_weight: float | None = None) -> dict[int, float]:
    """scikit-learn's "balanced" weights ``n / (k * n_class)`` per class index; empty classes get 0."""
    counts = np.asarray(counts, dtype=float)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    if max_weight is not None:
        weights = np.minimum(weights, max_weight)
    return {i: float(w) for i, w in enumerate(weights)}


def sqrt_class_weight(counts) -> dict[int, float]:
    """Square-root ("soft") balancing: ``class_weight_power(counts, 0.5)``."""
    return class_weight_power(counts, 0.5)


# --------------------------------------------------------------------------------------------------
# Callbacks: the best epoch in memory, validation scores, timing and progress
# --------------------------------------------------------------------------------------------------


def _callbacks(keras):
    """The callback classes (defined lazily: Keras is imported only when training)."""

    class KeepBest(keras.callbacks.Callback):
        """Remember the weights of the best epoch by ``monitor`` (in memory, across phases; with a ``backup``
        folder also on disk, so that a resumed run still knows its best epoch)."""

        def __init__(self, monitor: str, backup: Path | None = None):
            super().__init__()
            self.monitor, self.mode = monitor, ("min" if monitor.endswith("loss") else "max")
            self.best, self.best_epoch, self.snapshot = None, None, None
            self.backup = backup

        def resume(self, model) -> None:
            """Take the best epoch saved by an interrupted run of the same training (if any)."""
            if self.backup is None or not (self.backup / "best.json").exists():
                return
            saved = json.loads((self.backup / "best.json").read_text())
            with np.load(self.backup / "best.npz") as arrays:
                by_path = {path: arrays[f"arr_{i}"] for i, path in enumerate(saved["paths"])}
            self.best, self.best_epoch = saved["best"], saved["best_epoch"]
            self.snapshot = [(v, by_path[v.path]) for v in model.weights]

        def _save(self) -> None:
            self.backup.mkdir(parents=True, exist_ok=True)
            tmp = self.backup / "best.tmp.npz"
            np.savez(tmp, *[value for _, value in self.snapshot])
            tmp.replace(self.backup / "best.npz")
            (self.backup / "best.json").write_text(json.dumps(
                {"best": self.best, "best_epoch": self.best_epoch, "paths": [v.path for v, _ in self.snapshot]}))

        def on_epoch_end(self, epoch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not np.isfinite(loss):  # the weights are lost: stop, keep nothing of this run
                if self.backup is not None:  # nothing to resume from either (the key's folder, if no other task's)
                    shutil.rmtree(self.backup, ignore_errors=True)
                    for parent in (self.backup.parent, self.backup.parent.parent):
                        try:
                            parent.rmdir()
                        except OSError:
                            break
                raise TrainingDiverged(
                    f"Training diverged: the training loss was {float(loss)} in epoch {epoch + 1}, so the weights are "
                    "no longer numbers. Nothing was saved; the work folder's current model is unchanged. Train again "
                    "with a smaller learning_rate (or whole_model_lr_factor).")
            value = (logs or {}).get(self.monitor)
            if value is None or not np.isfinite(value):
                return
            better = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
            if better:
                self.best, self.best_epoch = float(value), epoch + 1
                # by variable object, not position: freezing a backbone reorders model.weights
                self.snapshot = [(v, np.array(v.numpy())) for v in self.model.weights]
                if self.backup is not None:
                    self._save()

        def restore(self):
            for variable, value in self.snapshot or ():
                variable.assign(value)

    class ValScores(keras.callbacks.Callback):
        """Validation macro-F1 and balanced accuracy each epoch (logs ``val_macro_f1``,
        ``val_balanced_accuracy``), with the config's test-time augmentation; needed when they pick the
        kept epoch or when TTA is on (then ``val_accuracy`` is recomputed with TTA too)."""

        def __init__(self, images, labels, tta: str):
            super().__init__()
            self.images, self.labels, self.tta = images, labels, tta

        def on_epoch_end(self, epoch, logs=None):
            from sklearn.metrics import f1_score

            probs = models.with_tta(lambda x: self.model.predict(x, verbose=0, batch_size=256), self.images, self.tta)
            pred = probs.argmax(axis=1)
            logs["val_macro_f1"] = float(f1_score(self.labels, pred, labels=range(len(EMOTIONS)), average="macro",
                                                  zero_division=0))
            present = sorted(set(self.labels.tolist()))
            recall = [(pred[self.labels == k] == k).mean() for k in present]  # as scikit-learn: classes present
            logs["val_balanced_accuracy"] = float(np.mean(recall)) if recall else float("nan")
            if self.tta != "none":
                logs["val_accuracy"] = float((pred == self.labels).mean())

    class EpochLog(keras.callbacks.Callback):
        """Seconds per epoch (and of them the training batches alone); one progress line per epoch,
        printed and appended to ``train_progress.jsonl`` for the runner."""

        def __init__(self, plan: list, progress_file: Path | None, show: bool, backup: Path | None = None):
            super().__init__()
            self.plan, self.total = plan, sum(p.epochs for p in plan)
            self.file, self.show = progress_file, show
            self.rows, self.phase, self.started = [], "", time.perf_counter()
            self.backup = backup / "epochs.jsonl" if backup is not None else None
            if self.backup is not None and self.backup.exists():  # epochs an interrupted run finished
                rows = [json.loads(line) for line in self.backup.read_text().splitlines() if line.strip()]
                self.rows = list({r["epoch"]: r for r in rows}.values())

        def on_epoch_begin(self, epoch, logs=None):
            self._t0, self._train_end = time.perf_counter(), None

        def learning_rate(self) -> float | None:
            """The optimizer's step size now, at the end of an epoch (it falls within a phase under
            ``lr_schedule="cosine"``), to 6 significant digits; None if the optimizer does not say."""
            try:
                value = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            except Exception:  # noqa: BLE001 - a custom optimizer without a readable rate
                return None
            return float(f"{value:.6g}")

        def on_test_begin(self, logs=None):  # fit's validation pass starts: training batches are done
            if getattr(self, "_t0", None) is not None and self._train_end is None:
                self._train_end = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            end = time.perf_counter()
            seconds, train_seconds = end - self._t0, (self._train_end or end) - self._t0
            row = {"epoch": epoch + 1, "phase": self.phase, **{k: float(v) for k, v in (logs or {}).items()},
                   "learning_rate": self.learning_rate(), "seconds": seconds, "train_seconds": train_seconds}
            self.rows = [r for r in self.rows if r["epoch"] != epoch + 1] + [row]
            if self.backup is not None:
                self.backup.parent.mkdir(parents=True, exist_ok=True)
                with open(self.backup, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
            left = self.total - (epoch + 1)
            pace = epoch_pace(self.rows, self.plan, self.phase)
            line = {"phase": self.phase, "epoch": epoch + 1, "epochs": self.total, "seconds": round(seconds, 2),
                    "elapsed_seconds": round(end - self.started, 1),
                    "eta_seconds": round(seconds_left(self.plan, self.phase, epoch + 1, pace), 1),
                    **{k: round(float(v), 4) for k, v in (logs or {}).items()
                       if k in ("loss", "accuracy", "val_loss", "val_accuracy", "val_macro_f1")}}
            if self.file is not None:
                with open(self.file, "a") as fh:
                    fh.write(json.dumps(line) + "\n")
            if self.show:
                scores = ", ".join(f"{k} {line[k]:.3f}" for k in ("loss", "val_accuracy", "val_macro_f1")
                                   if k in line)
                eta = f"~{_minutes(line['eta_seconds'])} left" if left else "done"
                print(f"epoch {epoch + 1:>2}/{self.total} ({self.phase}) {seconds:5.1f} s · {scores} · {eta}",
                      flush=True)

    return KeepBest, ValScores, EpochLog


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite: the run stops at the end of that epoch and saves nothing."""


#: How much longer an epoch takes once a frozen backbone trains too: its backward pass is added to its forward
#: pass, about twice the forward's work (so about 3× in all); the committed runs measured 3.2×, 3.35× and 3.7×
#: (a whole-model epoch after its first against a head epoch after its first).
UNFROZEN_SLOWDOWN = 3.4


def epoch_pace(rows: list, plan: list, phase: str) -> float:
    """Seconds an epoch of ``phase`` takes, from the epochs finished so far (``rows``: each with its ``phase`` and
    ``seconds``): the median of the phase's epochs after its first, since a phase's first epoch also builds its
    graph. With only that first epoch, an earlier phase's pace (times ``UNFROZEN_SLOWDOWN`` when this phase trains
    a backbone that one froze) is used if it is lower, so the time left does not jump up when a phase starts."""
    same = [float(r["seconds"]) for r in rows if r["phase"] == phase]
    if len(same) > 1:
        return float(np.median(same[1:]))
    names = [p.name for p in plan]
    pace = same[0] if same else None
    trained = {r["phase"] for r in rows}
    earlier = next((p for p in reversed(plan[:names.index(phase)]) if p.name in trained), None) \
        if phase in names else None
    if earlier is not None:
        slower = earlier.backbone_trainable is False and plan[names.index(phase)].backbone_trainable
        guess = epoch_pace(rows, plan, earlier.name) * (UNFROZEN_SLOWDOWN if slower else 1.0)
        pace = guess if pace is None else min(pace, guess)
    return 0.0 if pace is None else pace


def seconds_left(plan: list, phase: str, epochs_done: int, pace: float) -> float:
    """Seconds left in every phase of ``plan`` after ``epochs_done`` epochs, the current ``phase`` taking ``pace``
    seconds an epoch: a later phase that trains a backbone this one froze is taken to be ``UNFROZEN_SLOWDOWN``
    times slower, so the estimate covers the whole run, not the current phase."""
    names = [p.name for p in plan]
    current = plan[names.index(phase)] if phase in names else None
    left, start = 0.0, 0
    for p in plan:
        end = start + p.epochs
        remaining = max(0, end - max(start, epochs_done))
        slower = current is not None and current.backbone_trainable is False and p.backbone_trainable
        left += remaining * pace * (UNFROZEN_SLOWDOWN if slower else 1.0)
        start = end
    return left


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Phase:
    """One ``model.fit`` call: which epochs, at what learning rate, with the backbone frozen or not."""

    name: str  # "head", "whole" or "train"
    epochs: int
    learning_rate: float
    backbone_trainable: bool | None  # None: the model has no backbone


# ---- generated from notebooks/05_train_model.ipynb, cell 05-n06 ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
def phases(config) -> list:
    """The training phases ``config`` asks for: head, then whole model for a
    pretrained model with ``head_epochs``; else one phase."""
    rate = config.learning_rate
    if config.head_epochs:
        # 1. backbone frozen: only the new head learns, at the full rate
        head = Phase("head", config.head_epochs, rate, backbone_trainable=False)
        # 2. backbone unfrozen: everything learns, at a lower rate (small steps keep
        # what FER2013 taught)
        whole = Phase("whole", config.epochs, rate * config.whole_model_lr_factor, True)
        return [head, whole]
    backbone = models.traits(config.model).get("backbone")
    return [Phase("train", config.epochs, rate, True if backbone else None)]
# ---- end of generated code (notebooks/05_train_model.ipynb, cell 05-n06) ----


# ---- generated from notebooks/05_train_model.ipynb, cell 05-n09 ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
def compile_model(
    model, config, learning_rate: float, steps: int | None = None
) -> None:
    """``model.compile`` with Adam (AdamW with ``weight_decay``; a cosine schedule over
    ``steps``), cross-entropy or focal loss (with label smoothing) and accuracy."""
    import keras

    rate = learning_rate
    if config.lr_schedule == "cosine" and steps:  # decays to 0 over the phase's steps
        rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps)
    if config.weight_decay:
        optimizer = keras.optimizers.AdamW(rate, weight_decay=config.weight_decay)
    else:
        optimizer = keras.optimizers.Adam(learning_rate=rate)
    smoothing = config.label_smoothing
    if config.focal_gamma:  # (1 - p)^gamma: the faces classified well count less
        loss = keras.losses.CategoricalFocalCrossentropy(
            alpha=1.0, gamma=config.focal_gamma, label_smoothing=smoothing
        )
    else:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)
    model.compile(
        optimizer=optimizer,
        loss=loss,
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
# ---- end of generated code (notebooks/05_train_model.ipynb, cell 05-n09) ----


@dataclasses.dataclass
class TrainResult:
    model: object  # the best model (in memory, best epoch's weights)
    history: pd.DataFrame  # one row per epoch
    record: dict  # what train.json holds
    model_record: models.ModelRecord  # what model.json holds
    paths: dict  # name -> Path of each file written
    replaced: Path | None = None  # where the model this run replaced as current is kept


def _counts(work_dir) -> dict:
    counts = pipelines.split_counts(work_dir)
    return {s: int(counts[s].sum()) for s in counts.columns} | {"train_per_class": counts["train"].to_dict()}


def _val_arrays(batches):
    xs, ys = [], []
    legacy = hasattr(batches, "__getitem__") and not hasattr(batches, "element_spec")
    for x, y in (batches[i] for i in range(len(batches))) if legacy else batches:
        xs.append(np.asarray(x))
        ys.append(np.asarray(y).argmax(axis=1))
    return np.concatenate(xs), np.concatenate(ys)


@dataclasses.dataclass
class Run:
    """A training run in progress: what ``start`` prepares, ``fit_phase`` advances and ``finish`` saves."""

    config: TrainConfig
    work: Path
    model: object  # the Keras model being trained
    batches: dict  # "train" and "val" input pipelines (notebook 03's, with config's settings)
    counts: dict  # faces per split, and "train_per_class"
    steps: int  # training batches per epoch
    callbacks: list  # given to every fit: validation scores, the best epoch (KeepBest), epoch log, yours
    keep: object  # the KeepBest callback: the best epoch's weights, in memory, across phases
    log: object  # the EpochLog callback: seconds per epoch, progress lines
    policy: str  # the dtype policy the model was built in
    strategy: object = None  # the tf.distribute strategy (get_strategy(config.strategy))
    worker: dict = dataclasses.field(default_factory=dict)  # worker_info(strategy): task, chief, replicas...
    backup: Path | None = None  # this run's backup folder: an interrupted run resumes from it
    resumed_epochs: int = 0  # epochs an interrupted run had finished before this one resumed it
    write: bool = True
    class_weight: dict | None = None  # what fit gets (set it with class_weights(config, run.train_counts))
    histories: list = dataclasses.field(default_factory=list)  # one DataFrame per finished phase
    epochs_done: int = 0
    data_seconds: float = 0.0
    fit_seconds: float = 0.0
    undo: object = None  # what finish calls to undo this run's workarounds (multi-worker Keras fixes)

    @property
    def train_counts(self) -> list[int]:
        """Training faces per emotion, in ``EMOTIONS`` order."""
        return [self.counts["train_per_class"][e] for e in EMOTIONS]

    @property
    def global_batch_size(self) -> int:
        """Faces per training step over all replicas: ``batch_size`` × replicas."""
        return self.config.batch_size * int(self.worker.get("replicas", 1))

    @contextlib.contextmanager
    def recording(self, phase: Phase):
        """Around one phase's ``fit``: name the phase in the epoch log, time it, then keep its history."""
        self.log.phase = phase.name
        t0 = time.perf_counter()
        yield
        self.fit_seconds += time.perf_counter() - t0
        self.add_history(phase)

    def add_history(self, phase: Phase) -> pd.DataFrame:
        """Record one finished phase: one row per epoch (those of an interrupted run it resumed included),
        with what ``fit`` logged, the learning rate at the epoch's end (the phase's own rate where a row
        lacks it) and the seconds."""
        rows = [r for r in self.log.rows if r["phase"] == phase.name]
        frame = pd.DataFrame(rows).sort_values("epoch", ignore_index=True)
        timing = frame.pop("seconds"), frame.pop("train_seconds")
        rate = frame.pop("learning_rate") if "learning_rate" in frame else pd.Series(index=frame.index, dtype=float)
        frame["learning_rate"] = rate.astype(float).fillna(phase.learning_rate)
        frame["seconds"], frame["train_seconds"] = timing
        self.histories.append(frame)
        self.epochs_done += phase.epochs
        return frame


def random_layers(model) -> list:
    """The random number generators (``keras.random.SeedGenerator``) of ``model``'s layers, nested models'
    included, in layer order: Dropout's, the augmentation layers'…"""
    found, seen = [], set()

    def walk(layer):
        for generator in getattr(layer, "_seed_generators", None) or []:
            if id(generator) not in seen:
                seen.add(id(generator))
                found.append(generator)
        for inner in getattr(layer, "layers", None) or []:
            walk(inner)

    walk(model)
    return found


def seed_random_layers(model, seed: int) -> int:
    """Give each random layer of ``model`` a state drawn from ``seed``; returns how many there are.

    A layer built without a seed (``Dropout(0.3)``) draws one from Python's random state when it is made, and
    loading a ``.keras`` file makes the layers again: notebook 04's ``untrained.keras``, loaded in notebook 05
    before ``keras.utils.set_random_seed``, drew other dropout masks in every run, so two runs with the same
    seed trained different models. Seeding them here makes a run repeat."""
    rng = np.random.default_rng([seed, 20585])  # a stream of its own (20585: any fixed second key), apart from seed's
    generators = random_layers(model)
    for generator in generators:
        state = generator.state
        state.assign(np.array([rng.integers(1, 10**9), 0], dtype=np.dtype(state.dtype)))
    return len(generators)


def start(config: TrainConfig, work_dir: str | os.PathLike, model=None, *, callbacks=(), show_progress: bool = True,
          write: bool = True) -> Run:
    """Seed everything, build the input pipelines (``pipelines.make_pipelines``) and the callbacks, and take the
    model (``model``, e.g. notebook 04's ``untrained.keras``, else ``config.model`` built from the registry)."""
    import fer_utils

    _, keras = fer_utils.import_tensorflow()
    work = Path(work_dir)
    strategy = get_strategy(config.strategy)  # tf.distribute: one device, mirrored devices or a cluster
    worker = worker_info(strategy)
    write = write and worker["chief"]  # only the chief writes the model and the records
    keras.utils.set_random_seed(config.seed)  # the same seed on every worker: the same shuffling everywhere
    t_data = time.perf_counter()
    global_batch = config.batch_size * worker["replicas"]  # each replica takes batch_size faces per step
    batches = pipelines.make_pipelines(config.replace(batch_size=global_batch), work, splits=("train", "val"))
    counts = _counts(work)
    if worker["workers"] > 1:
        batches = _shard_by_data(batches)
    elif worker["replicas"] > 1:
        batches = _no_empty_replica(batches, counts, global_batch, worker["replicas"])
    data_seconds = time.perf_counter() - t_data
    if model is None:
        with strategy.scope():  # variables are created on every device the strategy uses
            net = build_model(config)
    else:
        models.check_contract(model, config.input_shape)
        net = model if config.strategy == "default" else _into_scope(model, strategy)
        seed_random_layers(net, config.seed)  # a loaded model drew its dropout seeds when it was loaded
    # more than one replica: build from one replica's batch (a split need not divide evenly over them)
    undo = _distributed_fixes(net, strategy, worker["workers"] > 1) if worker["replicas"] > 1 else None
    policy = net.dtype_policy.name if hasattr(net, "dtype_policy") else "float32"
    backup = _backup_dir(work, config, net, worker)
    progress = work / TRAIN_PROGRESS if write else None
    KeepBest, ValScores, EpochLog = _callbacks(keras)
    keep, log = KeepBest(config.monitor, backup), EpochLog(phases(config), progress, show_progress, backup)
    keep.resume(net)
    if progress is not None:
        progress.write_text("")
    extra = []
    if config.monitor in ("val_macro_f1", "val_balanced_accuracy") or config.tta != "none":
        extra.append(ValScores(*_val_arrays(batches["val"]), config.tta))
    # batches per epoch, as the pipeline yields them (tf.data: its cardinality; between workers it can be unknown)
    steps = int(batches["train"].cardinality()) if config.pipeline == "tf.data" else len(batches["train"])
    steps = steps if steps > 0 else max(1, counts["train"] // global_batch)
    others = [p for p in (work / BACKUP_DIR).glob("*") if p != backup.parent] if (work / BACKUP_DIR).is_dir() else []
    if others and not log.rows and show_progress and worker["chief"]:
        print(f"Not resuming: the backup of an interrupted run in {display_path(others[0], work)} has other "
              "settings (rerun with those to resume it, or delete it).", flush=True)
    if log.rows and show_progress:
        print(f"Resuming an interrupted run of this training after epoch {max(r['epoch'] for r in log.rows)} "
              f"(backup in {display_path(backup, work)}; delete it to start afresh)", flush=True)
    return Run(config=config, work=work, model=net, batches=batches, counts=counts, steps=steps,
               callbacks=[*extra, keep, log, *callbacks], keep=keep, log=log, policy=policy, strategy=strategy,
               worker=worker, backup=backup, resumed_epochs=len(log.rows), write=write, data_seconds=data_seconds,
               undo=undo)


def backup_callbacks(run, phase) -> list:
    """``BackupAndRestore`` for this phase: the weights, optimizer state and epoch are saved after every epoch,
    and a ``fit`` that finds them (an interrupted run, restarted) continues from there."""
    import fer_utils

    _, keras = fer_utils.import_tensorflow()
    return [keras.callbacks.BackupAndRestore(str(run.backup / phase.name), double_checkpoint=True)]


def resume_finished_phase(run, phase) -> bool:
    """True when an interrupted run of this training had finished ``phase``: its weights are loaded instead."""
    done = run.backup / f"{phase.name}.done.weights.h5"
    if done.exists():
        run.model.load_weights(done)
        return True
    return False


def save_finished_phase(run, phase) -> None:
    run.model.save_weights(run.backup / f"{phase.name}.done.weights.h5")


# ---- generated from notebooks/05_train_model.ipynb, cell 05-n10 ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
def fit_phase(run, phase):
    """One phase: (un)freeze the backbone, compile at the phase's rate, ``fit`` its
    epochs. A phase an interrupted run had finished is not repeated; one it had
    begun continues."""
    model, config = run.model, run.config
    if phase.epochs == 0:
        return None
    if resume_finished_phase(run, phase):
        return run.add_history(phase)
    if phase.backbone_trainable is not None:  # the pretrained part: frozen or trainable
        backbone = model.get_layer(models.traits(config.model)["backbone"])
        backbone.trainable = phase.backbone_trainable
    with run.strategy.scope():  # after every (un)freeze
        compile_model(model, config, phase.learning_rate, run.steps * phase.epochs)
    with run.recording(phase):
        model.fit(
            run.batches["train"],
            validation_data=run.batches["val"],
            initial_epoch=run.epochs_done,
            epochs=run.epochs_done + phase.epochs,
            class_weight=run.class_weight,
            callbacks=[*backup_callbacks(run, phase), *run.callbacks],
            shuffle=False,
            verbose=0,
        )
    save_finished_phase(run, phase)
    return run.histories[-1]
# ---- end of generated code (notebooks/05_train_model.ipynb, cell 05-n10) ----


def finish(run: Run, run_name: str | None = None) -> TrainResult:
    """Restore the best epoch's weights; with ``run.write``, save the model under ``models/<run_name>/`` and make
    it the work folder's current model (see the module docstring)."""
    config, net, keep = run.config, run.model, run.keep
    if run.undo is not None:
        run.undo()
        run.undo = None
    keep.restore()
    history = pd.concat(run.histories, ignore_index=True)
    record = _record(config, history, run.counts, net, run.policy, keep, run.data_seconds, run.fit_seconds,
                     run.class_weight)
    record["steps_per_epoch"] = run.steps
    record["distribution"] = {"strategy": config.strategy, **run.worker, "global_batch_size": run.global_batch_size,
                              "resumed_after_epoch": run.resumed_epochs or None}
    record["memory"] = memory_info()
    shutil.rmtree(run.backup, ignore_errors=True)  # finished: nothing to resume any more
    for parent in (run.backup.parent, run.backup.parent.parent):
        try:
            parent.rmdir()  # only when empty: other workers may still be finishing
        except OSError:
            break
    model_record = config.model_record(precision=run.policy, trained=True, best_epoch=keep.best_epoch,
                                       best=record["best"], parameters=int(net.count_params()))
    result = TrainResult(model=net, history=history, record=record, model_record=model_record, paths={})
    if run.write:
        _write(result, run.work, run_name or default_run_name(config))
    return result


# ---- generated from notebooks/05_train_model.ipynb, cell 05-n14 ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
def train(
    config,
    work_dir,
    model=None,
    *,
    callbacks=(),
    run_name=None,
    show_progress=True,
    write=True,
):
    """Train on ``<work_dir>/split/train``, validate on ``split/val``, keep the best
    epoch (``config.monitor``).

    ``model``: a built model honouring the contract (e.g. notebook 04's
    ``untrained.keras``); default: ``config.model`` from the registry. ``callbacks``
    go to every ``fit``. With ``write``, the model is saved under
    ``models/<run_name>/`` and becomes the current one. The runner's notebooks, the
    benchmarks and the tests all train through this function; notebook 05 runs its
    lines one cell at a time.
    """
    run = start(
        config,
        work_dir,
        model,
        callbacks=callbacks,
        show_progress=show_progress,
        write=write,
    )
    # rare emotions weigh more in the loss
    run.class_weight = class_weights(config, run.train_counts)
    for phase in phases(config):  # head, then whole model (pretrained), or one phase
        fit_phase(run, phase)
    return finish(run, run_name)
# ---- end of generated code (notebooks/05_train_model.ipynb, cell 05-n14) ----


def default_run_name(config: TrainConfig) -> str:
    """``<model>-<H>px-<YYYYmmdd-HHMMSS>``: the folder under ``models/`` that keeps a run's model."""
    return f"{config.model}-{config.image_size[0]}px-{time.strftime('%Y%m%d-%H%M%S')}"


def _record(config, history, counts, net, policy, keep, data_seconds, train_seconds, weights) -> dict:
    steady = history.groupby("phase", sort=False).apply(lambda g: g.iloc[1:] if len(g) > 1 else g,
                                                        include_groups=False)
    best_row = history[history.epoch == keep.best_epoch].iloc[0] if keep.best_epoch else history.iloc[-1]
    n_train = counts["train"]
    per_phase = {name: {"epochs": int(len(g)), "seconds": round(float(g.seconds.sum()), 3),
                        "seconds_per_epoch": round(float(g.seconds.median()), 3)}
                 for name, g in history.groupby("phase", sort=False)}
    return {
        "step": "train",
        "config": config.to_dict(),
        "seed": config.seed,
        "precision": policy,
        "counts": counts,
        "class_weight": {EMOTIONS[k]: round(v, 4) for k, v in weights.items()} if weights else None,
        "parameters_count": int(net.count_params()),
        "best_epoch": keep.best_epoch,
        "best": {k: float(best_row[k]) for k in history.columns if k.startswith(("val_", "accuracy", "loss"))},
        "phases": per_phase,
        "epoch_seconds": [round(float(s), 3) for s in history.seconds],
        "first_epoch_seconds": round(float(history.seconds.iloc[0]), 3),
        "seconds_per_epoch": round(float(steady["seconds"].mean()), 3),
        "train_seconds_per_epoch": round(float(steady["train_seconds"].mean()), 3),
        "images_per_second": round(n_train / float(steady["train_seconds"].mean()), 1),
        "data_seconds": round(data_seconds, 3),
        "train_seconds": round(train_seconds, 3),
    }


def check_run_name(work: Path, run_name: str | None) -> None:
    """Refuse, before training, a run name that is not one plain folder name under ``models/`` (a ``/``, ``..``,
    an absolute path would write elsewhere) or that is taken already; ``None`` (the default name) passes."""
    if run_name is None:
        return
    if not run_name or run_name in (".", "..") or any(c in run_name for c in "/\\") or Path(run_name).is_absolute():
        raise ValueError(f"run_name {run_name!r} must be one folder name under models/ (no '/', '\\' or '..').")
    if (Path(work) / MODELS_DIR / run_name).exists():
        raise ValueError(f"models/{run_name} exists already in the work folder; choose another run_name.")


def _write(result: TrainResult, work: Path, run_name: str) -> None:
    """Save the run under ``models/<run_name>/`` and make it the work folder's current model."""
    folder = work / MODELS_DIR / run_name
    if folder.exists():
        raise FileExistsError(f"{display_path(folder, work)} exists already; choose another run_name.")
    folder.mkdir(parents=True)
    result.model_record = models.save(result.model, folder / MODEL_FILE, result.model_record.replace(run=run_name))
    result.history.to_csv(folder / HISTORY, index=False)
    record = {**result.record, "run": run_name, "model_sha256": result.model_record.model_sha256}
    write_record(folder / TRAIN_RECORD, record)
    result.record = record
    result.replaced = keep_current_model(work)
    for name in (MODEL_FILE, MODEL_RECORD, HISTORY, TRAIN_RECORD):
        tmp = work / f".{name}.tmp"
        shutil.copyfile(folder / name, tmp)
        tmp.replace(work / name)
    result.paths = {"run": folder, "model": work / MODEL_FILE, "model_record": work / MODEL_RECORD,
                    "history": work / HISTORY, "record": work / TRAIN_RECORD}


def keep_current_model(work: str | os.PathLike) -> Path | None:
    """Before a new model becomes current: make sure the current one is kept under ``models/``.

    Returns the folder that holds it (its own run folder, or ``models/previous-<time>/`` where it is moved
    when no run folder has the same bytes), or None when there is no current model.
    """
    work = Path(work)
    current = work / MODEL_FILE
    if not current.exists():
        return None
    digest = sha256_of(current)
    for record_path in sorted((work / MODELS_DIR).glob(f"*/{MODEL_RECORD}")):
        try:
            if models.ModelRecord.read(record_path).model_sha256 == digest:
                return record_path.parent
        except (models.RecordError, OSError):
            continue
    folder = work / MODELS_DIR / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_FILE, MODEL_RECORD, HISTORY, TRAIN_RECORD):
        if (work / name).exists():
            shutil.copyfile(work / name, folder / name)
    return folder


def trained_models(work: str | os.PathLike) -> pd.DataFrame:
    """Every model kept under ``models/``: run, model, size, best epoch and validation accuracy, and
    which one is current (the work folder's ``model.keras``)."""
    work = Path(work)
    current = sha256_of(work / MODEL_FILE) if (work / MODEL_FILE).exists() else None
    rows = []
    for record_path in sorted((work / MODELS_DIR).glob(f"*/{MODEL_RECORD}")):
        try:
            rec = models.ModelRecord.read(record_path)
        except (models.RecordError, OSError):
            continue
        rows.append({"run": record_path.parent.name, "model": rec.model,
                     "image size": "×".join(map(str, rec.image_size)), "best epoch": rec.best_epoch,
                     "val accuracy": round(rec.best.get("val_accuracy", float("nan")), 4),
                     "current": rec.model_sha256 == current})
    return pd.DataFrame(rows, columns=["run", "model", "image size", "best epoch", "val accuracy", "current"])


# --------------------------------------------------------------------------------------------------
# Pictures and tables for notebook 05
# --------------------------------------------------------------------------------------------------


def epoch_table(history: pd.DataFrame) -> pd.DataFrame:
    """One short line per epoch: losses, accuracies and seconds, rounded."""
    cols = [c for c in ("epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "val_macro_f1", "seconds")
            if c in history]
    return history[cols].round(3).set_index("epoch")


def plot_history(history: pd.DataFrame, best_epoch: int | None = None):
    """Loss and accuracy curves, training and validation, with the kept epoch marked."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(history.epoch, history[metric], "o-", label="train")
        if f"val_{metric}" in history:
            ax.plot(history.epoch, history[f"val_{metric}"], "s-", label="validation")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"kept (epoch {best_epoch})")
        ax.set(xlabel="epoch", ylabel=metric, title=metric.capitalize())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def summary_table(record: dict) -> pd.DataFrame:
    """The run at a glance: model, precision, epochs, time per epoch, images per second, and the epoch kept
    (the best by ``config.monitor``) with its validation figures."""
    p = record["config"]
    monitor = p.get("monitor", "val_accuracy")
    rows = {"run": record.get("run", ""), "model": p["model"], "pipeline": p["pipeline"],
            "precision": record["precision"],
            "image size": "×".join(map(str, p["image_size"])) + f" {p['color_mode']}",
            "epochs": (f"{p['head_epochs']} head + {p['epochs']} whole model" if p.get("head_epochs")
                       else p["epochs"]),
            "training images": record["counts"]["train"],
            "first epoch (s)": record["first_epoch_seconds"], "seconds per epoch": record["seconds_per_epoch"],
            "training images per second": record["images_per_second"], "total training (s)": record["train_seconds"],
            "kept epoch": f"{record['best_epoch']} (best {monitor})"}
    for name in dict.fromkeys((monitor, "val_accuracy")):  # the figure that chose it, then accuracy
        rows[f"{name.replace('_', ' ')} at the kept epoch"] = round(record["best"].get(name, float("nan")), 4)
    return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=pd.Index(list(rows), name=""))


# ---- generated from notebooks/08_train_at_scale.ipynb, cell c10b ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
def mirrored_strategy():
    """``tf.distribute.MirroredStrategy`` over this machine's GPUs or, without GPUs,
    its logical CPU devices."""
    import fer_utils

    tf, _ = fer_utils.import_tensorflow()
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus] or [
        d.name for d in tf.config.list_logical_devices("CPU")
    ]
    # NCCL all-reduce is for GPUs only
    cross = None if gpus else tf.distribute.ReductionToOneDevice()
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=cross)
# ---- end of generated code (notebooks/08_train_at_scale.ipynb, cell c10b) ----
