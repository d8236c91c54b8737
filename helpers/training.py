"""Training: profiles, device strategy, callbacks and the fit loop.

Two profiles: the default suits a Colab GPU; with no GPU a CPU profile
(smaller input and width, a wall-clock budget) is chosen. Any value can be
overridden by the caller.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import pandas as pd

try:
    import tensorflow as tf
except ImportError:  # Keras on JAX or PyTorch: ``train`` works, without TensorBoard logs.
    tf = None

from helpers.losses import DiceBCELoss, DiceScore
from helpers.metrics import confusion_counts, scores_from_counts
from helpers.model import require_one_channel
from helpers.preprocessing import require_tensorflow

GPU_PROFILE = {
    "name": "gpu",
    "input_size": 256,
    "base_filters": 32,
    "batch_size": 16,
    "epochs": 60,
    "time_budget_minutes": None,
    "mixed_precision": True,
    "oversample_tumour": 0.5,
}
CPU_PROFILE = {
    "name": "cpu",
    "input_size": 128,
    "base_filters": 16,
    "batch_size": 16,
    "epochs": 40,
    "time_budget_minutes": 75,
    "mixed_precision": False,
    "oversample_tumour": 0.5,
}


def choose_profile(depth: int = 4, **overrides) -> dict:
    """The GPU profile when a GPU is visible, else the CPU one; ``None`` overrides are ignored.

    Args:
        depth: the downsamplings of the ResUNet to be built (4 in notebook
            04), which the input size must allow; not part of the profile.
        **overrides: profile keys to replace (``input_size=256``...).

    Returns:
        The profile dict, with ``device`` naming what was found.

    Raises:
        ValueError: for a value out of range, naming the notebook parameter
            that sets it (``EPOCHS`` for ``epochs``...), before anything is
            written or moved.
    """
    gpus = count_gpus()
    profile = dict(GPU_PROFILE if gpus else CPU_PROFILE)
    profile.update({k: v for k, v in overrides.items() if v is not None})
    profile["device"] = f"{gpus} GPU(s)" if gpus else "CPU"
    check_profile(profile, depth)
    return profile


def check_profile(profile: dict, depth: int = 4) -> None:
    """Refuse profile values out of range, naming each notebook parameter (the key in capitals).

    Args:
        profile: a training profile (``choose_profile``'s keys).
        depth: the ResUNet's downsamplings; the input size must be a
            multiple of ``2 ** depth``.

    Raises:
        ValueError: listing every value out of range, e.g. ``EPOCHS = -3:
            give a whole number of at least 1.``
    """
    def number(value) -> bool:
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)

    problems = []
    for key, smallest in {"input_size": 2**depth, "base_filters": 1, "batch_size": 1, "epochs": 1}.items():
        value = profile.get(key)
        if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= smallest):
            problems.append(f"{key.upper()} = {value!r}: give a whole number of at least {smallest}.")
        elif key == "input_size" and value % 2**depth:
            below = value // 2**depth * 2**depth
            problems.append(f"INPUT_SIZE = {value}: the ResUNet (depth {depth}) halves it {depth} times, so give "
                            f"a multiple of {2**depth} ({below} or {below + 2**depth}, say).")
    budget = profile.get("time_budget_minutes")
    if budget is not None and not (number(budget) and budget >= 0):
        problems.append(f"TIME_BUDGET_MINUTES = {budget!r}: give minutes (0 or None: no budget).")
    oversample = profile.get("oversample_tumour")
    if not (number(oversample) and oversample >= 0):
        problems.append(f"OVERSAMPLE_TUMOUR = {oversample!r}: give a share of at least 0 (0.5: half as many "
                        "tumour slices again per epoch).")
    if problems:
        raise ValueError(" ".join(problems))


def count_gpus() -> int:
    """The number of GPUs TensorFlow sees, or, where it is absent, Keras' JAX or PyTorch backend.

    Returns:
        0 or more; 0 also under a backend it cannot ask (NumPy, OpenVINO).
    """
    return len(_gpu_names())


def _gpu_names() -> list[str]:
    """The name of each GPU that TensorFlow, or without it Keras' JAX or PyTorch backend, sees."""
    if tf is not None:
        gpus = tf.config.list_physical_devices("GPU")
        return [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
    if keras.backend.backend() == "jax":
        import jax

        return [device.device_kind for device in jax.devices() if device.platform == "gpu"]
    if keras.backend.backend() == "torch":
        import torch

        return [f"GPU {k}" for k in range(torch.cuda.device_count())]
    return []


def choose_strategy() -> tf.distribute.Strategy:
    """TPU if one is attached (Colab), MirroredStrategy for several GPUs, else the default."""
    require_tensorflow("choose_strategy")
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except (ValueError, RuntimeError, tf.errors.NotFoundError):
        pass
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def compile_model(model: keras.Model, learning_rate: float = 1e-3,
                  dice_weight: float = 1.0, bce_weight: float = 1.0,
                  ema_momentum: float | None = None, miss_weight: float = 0.5) -> keras.Model:
    """Compile with Adam, Dice + cross-entropy, and the Dice metric.

    A one-channel model gets one ``dice`` metric; a softmax model with C
    classes gets ``dice_class_1`` ... ``dice_class_{C-1}``, one per tumour class.

    Args:
        model: the model to compile.
        learning_rate: Adam's initial rate.
        dice_weight: weight of the Dice term of the loss.
        bce_weight: weight of the cross-entropy term.
        ema_momentum: if given (0.99 averages over about the last 100 steps),
            Adam keeps an exponential moving average of the weights (Polyak
            averaging); ``train`` then validates, checkpoints and ends with the
            averaged weights.
        miss_weight: weight of false negatives in the overlap term; 0.5 is
            Dice, above 0.5 a Tversky loss that favours recall
            (``helpers.losses.soft_tversky``).

    Returns:
        The same model, compiled.
    """
    classes = model.output_shape[-1]
    metrics = [DiceScore()] if classes == 1 else [
        DiceScore(class_index=k, name=f"dice_class_{k}") for k in range(1, classes)]
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate, use_ema=ema_momentum is not None,
                                        ema_momentum=0.99 if ema_momentum is None else ema_momentum),
        loss=DiceBCELoss(dice_weight=dice_weight, bce_weight=bce_weight, miss_weight=miss_weight),
        metrics=metrics,
    )
    return model


class PatientDice(keras.callbacks.Callback):
    """Per-patient Dice on validation patients, logged as ``val_patient_dice``.

    Each validation patient's slices are predicted and counted as one stack,
    the way results on this dataset are reported; the mean over patients is
    what checkpointing and early stopping watch.

    Args:
        images: uint8 (N, H, W, 3) validation slices at the model's input size.
        masks: uint8 (N, H, W) validation masks, 0/1.
        patients: the patient of each slice, length N.
        batch_size: prediction batch size.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, patients, batch_size: int = 32):
        super().__init__()
        self.images, self.masks = images, masks
        self.patients = np.asarray(patients)
        self.batch_size = batch_size

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["val_patient_dice"] = patient_dice(self.model, self.images, self.masks, self.patients,
                                                    self.batch_size)


def patient_dice(model: keras.Model, images: np.ndarray, masks: np.ndarray, patients,
                 batch_size: int = 32, threshold: float = 0.5) -> float:
    """Mean over patients of the Dice of each patient's whole stack of slices.

    Args:
        model: a one-channel segmentation model taking (N, H, W, 3) in [0, 1].
        images: uint8 (N, H, W, 3) slices at the model's input size.
        masks: uint8 (N, H, W) masks, 0/1.
        patients: the patient of each slice, length N.
        batch_size: prediction batch size.
        threshold: probability above which a pixel is tumour.

    Returns:
        The mean per-patient Dice, 0-1.

    Raises:
        ValueError: if the model gives more than one channel
            (``helpers.model.require_one_channel``).
    """
    probabilities = model.predict(images.astype(np.float32) / 255.0, batch_size=batch_size, verbose=0)
    require_one_channel(model, probabilities)
    probabilities = probabilities[..., 0]
    patients = np.asarray(patients)
    scores = []
    for patient in np.unique(patients):
        rows = patients == patient
        counts = confusion_counts(masks[rows], probabilities[rows] > threshold)
        scores.append(scores_from_counts(*counts)["dice"])
    return float(np.mean(scores))


class TimeBudget(keras.callbacks.Callback):
    """Stop training before an epoch would end past a wall-clock budget.

    Args:
        seconds: the budget, counted from the start of ``fit``.
        spent_seconds: training time already spent on this run before a
            resume, counted against the budget.
    """

    def __init__(self, seconds: float, spent_seconds: float = 0.0):
        super().__init__()
        self.seconds = seconds
        self.spent_seconds = spent_seconds
        self.stopped_for_time = False

    def on_train_begin(self, logs=None):
        self.start = time.monotonic() - self.spent_seconds
        self.longest_epoch = 0.0
        self.epoch_start = self.start

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        now = time.monotonic()
        self.longest_epoch = max(self.longest_epoch, now - self.epoch_start)
        if now - self.start + self.longest_epoch > self.seconds:
            self.stopped_for_time = True
            self.model.stop_training = True
            print(f"Time budget of {self.seconds / 60:.0f} min reached: stopping after epoch {epoch + 1}.")


def _loss_is_finite(logs: dict | None) -> bool:
    loss = (logs or {}).get("loss")
    return loss is None or bool(np.isfinite(loss))


class _CheckpointUnlessNaN(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` that skips an epoch whose loss turned NaN.

    A model with NaN weights predicts nothing, which can score a higher
    validation Dice than a real model on mostly empty slices.
    """

    def on_epoch_end(self, epoch, logs=None):
        if _loss_is_finite(logs):
            super().on_epoch_end(epoch, logs)


class _BackupUnlessNaN(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` that keeps the last good epoch when the loss turns NaN.

    ``TerminateOnNaN`` stops mid-epoch, but Keras still ends the epoch, and the
    plain callback would then overwrite the backup with the NaN weights.
    """

    def on_epoch_end(self, epoch, logs=None):
        if _loss_is_finite(logs):
            super().on_epoch_end(epoch, logs)


class _KeepAveragedWeights(keras.callbacks.Callback):
    """End a run stopped early with the averaged weights in the model.

    ``SwapEMAWeights(swap_on_epoch=True)`` leaves the averaged weights in the
    model after each epoch but hands them back to the optimizer only after the
    last planned epoch; when early stopping or the time budget ends the run
    sooner, ``fit`` would overwrite the model with the raw weights. Placed after
    every callback that can stop training, this one hands them back then too.

    Args:
        swap: the run's ``SwapEMAWeights`` callback.
    """

    def __init__(self, swap: keras.callbacks.SwapEMAWeights):
        super().__init__()
        self.swap = swap

    def on_epoch_end(self, epoch, logs=None):
        # Private members of SwapEMAWeights (Keras 3.15); the budget test in
        # tests/test_training.py fails if they change.
        if self.model.stop_training and self.swap._ema_weights_in_model:
            self.swap._finalize_ema_values()


class CosineDecay(keras.callbacks.Callback):
    """Cosine learning-rate decay over the epochs or the wall-clock budget, whichever ends first.

    The rate falls from the optimizer's initial rate to ``final_fraction`` of
    it along half a cosine. Progress is the larger of the share of epochs done
    and the share of the time budget spent, so a run stopped by its budget
    still ends at a low rate, where the weights settle.

    Args:
        epochs: the run's number of epochs.
        time_budget_seconds: the run's budget, ``None`` for none.
        final_fraction: the last rate as a share of the first.
        spent_seconds: training time already spent on this run before a
            resume, so the rate goes on from where it was.
    """

    def __init__(self, epochs: int, time_budget_seconds: float | None = None, final_fraction: float = 0.02,
                 spent_seconds: float = 0.0):
        super().__init__()
        self.epochs = epochs
        self.time_budget_seconds = time_budget_seconds
        self.final_fraction = final_fraction
        self.spent_seconds = spent_seconds
        self.epoch = 0

    def on_train_begin(self, logs=None):
        self.start = time.monotonic() - self.spent_seconds
        self.initial = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        steps = self.params.get("steps") or 1
        progress = (self.epoch + batch / steps) / max(self.epochs, 1)
        if self.time_budget_seconds:
            progress = max(progress, (time.monotonic() - self.start) / self.time_budget_seconds)
        progress = min(progress, 1.0)
        scale = self.final_fraction + (1 - self.final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
        self.model.optimizer.learning_rate.assign(self.initial * scale)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class _TrainingClock(keras.callbacks.Callback):
    """Record, after each good epoch, the training time the run has spent, resumes included.

    Written beside the backup, so that a resumed run counts its time budget
    and its cosine schedule from where the backup left them.

    Args:
        path: the JSON file to write (``{"seconds": float, "epochs": int}``).
        spent_seconds: the time recorded there before this ``fit``.
    """

    def __init__(self, path: Path, spent_seconds: float = 0.0):
        super().__init__()
        self.path = path
        self.spent_seconds = spent_seconds

    def on_train_begin(self, logs=None):
        self.start = time.monotonic() - self.spent_seconds

    def on_epoch_end(self, epoch, logs=None):
        if _loss_is_finite(logs):  # as the backup: a NaN epoch is not kept
            self.path.write_text(json.dumps({"seconds": time.monotonic() - self.start, "epochs": epoch + 1}))


def train(
    model: keras.Model,
    train_dataset,
    val_dataset,
    output_dir: str | Path,
    epochs: int = 40,
    time_budget_minutes: float | None = None,
    patience: int = 10,
    val_patient_arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    verbose: int | str = 2,
    schedule: str = "cosine",
    extra_callbacks: list | None = None,
    keep_epochs: bool = False,
) -> pd.DataFrame:
    """Fit a compiled model with checkpointing, resumption and logging.

    Writes under ``output_dir``: ``best.keras`` (best epoch by validation
    per-patient Dice, or validation Dice without patient arrays),
    ``backup/`` (``BackupAndRestore``: a killed run started again resumes at
    its last finished epoch; kept when the loss turns NaN),
    ``history.csv`` (appended on resume), ``logs/`` (TensorBoard, when
    TensorFlow is installed), ``clock.json`` (training time spent so far,
    after each epoch: a resumed run counts its time budget and its cosine
    schedule on from there, rather than afresh) and ``training_time.json``
    (the run's training time, resumes included). With ``keep_epochs``, also
    ``epochs/epoch_NNN.weights.h5``: every epoch's weights (NNN from 001),
    for choosing a checkpoint otherwise or averaging several
    (``average_weights``).

    With an optimizer compiled with ``ema_momentum``, validation, the
    checkpoints and the model at the end use the averaged weights; training
    goes on with the raw ones, also after a resume. The training loss and
    Dice of the history are those of the raw weights.

    Args:
        model: a compiled model.
        train_dataset: batches of (image, mask) for training: a
            ``tf.data.Dataset`` (``make_dataset``), or anything ``fit`` takes,
            such as a ``keras.utils.PyDataset``.
        val_dataset: batches of (image, mask) for validation, likewise.
        output_dir: folder for checkpoints and logs.
        epochs: the most epochs to run (counting those before a resume).
        time_budget_minutes: stop before an epoch would end past this,
            counting the time spent before a resume.
        patience: epochs without improvement before early stopping.
        val_patient_arrays: (images, masks, patients) of the validation
            slices, to compute per-patient Dice each epoch.
        verbose: Keras verbosity; 2 prints one line per epoch (papermill logs).
        schedule: ``"cosine"`` (``CosineDecay`` over the epochs or the time
            budget), ``"plateau"`` (halve the rate after 4 epochs without
            improvement) or ``"constant"`` (the optimizer's rate throughout,
            as when the weights of many epochs are to be averaged).
        extra_callbacks: more callbacks, run before the checkpoint and the
            CSV history (so what they add to the logs is saved).
        keep_epochs: save every epoch's weights under ``epochs/`` (about
            25 MB an epoch at width 16: Keras saves Adam's moments with them).

    Returns:
        The whole history (all runs), one row per epoch.

    Raises:
        ValueError: if the training or validation dataset is a ``tf.data.Dataset``
            of integer images (``make_dataset(image_dtype="uint8")``) and the
            model, or a model nested in it, does not standardise each slice
            itself. (Other inputs, such as arrays or a ``PyDataset``, are not checked.)
    """
    _check_input_scale(model, train_dataset, "training")
    _check_input_scale(model, val_dataset, "validation")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    history_path = output_dir / "history.csv"
    monitor = "val_patient_dice" if val_patient_arrays is not None else "val_dice"
    checkpoint = _CheckpointUnlessNaN(
        output_dir / "best.keras", monitor=monitor, mode="max", save_best_only=True, verbose=1
    )
    if history_path.exists() and history_path.stat().st_size:
        previous = pd.read_csv(history_path)
        if monitor in previous:
            checkpoint.best = float(previous[monitor].max())
    clock_path = output_dir / "clock.json"
    resuming = (output_dir / "backup" / "latest.weights.h5").exists() and clock_path.exists()
    spent = float(json.loads(clock_path.read_text())["seconds"]) if resuming else 0.0
    callbacks = [_TrainingClock(clock_path, spent)]
    if val_patient_arrays is not None:
        callbacks.append(PatientDice(*val_patient_arrays))
    callbacks += list(extra_callbacks or [])
    if keep_epochs:
        (output_dir / "epochs").mkdir(exist_ok=True)
        callbacks.append(_CheckpointUnlessNaN(str(output_dir / "epochs" / "epoch_{epoch:03d}.weights.h5"),
                                              save_weights_only=True))
    callbacks += [
        checkpoint,
        _BackupUnlessNaN(str(output_dir / "backup"), delete_checkpoint=False),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(str(history_path), append=True),
        keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=patience),
    ]
    if tf is not None:  # Keras writes TensorBoard logs through TensorFlow.
        callbacks.append(keras.callbacks.TensorBoard(str(output_dir / "logs")))
    else:
        print("TensorFlow is not installed: no TensorBoard logs (history.csv holds the curves).")
    if schedule == "cosine":
        budget = time_budget_minutes * 60 if time_budget_minutes else None
        callbacks.insert(0, CosineDecay(epochs, budget, spent_seconds=spent))
    elif schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode="max", factor=0.5, patience=4))
    elif schedule != "constant":
        raise ValueError(f"schedule={schedule!r}: use 'cosine', 'plateau' or 'constant'.")
    if time_budget_minutes:
        callbacks.append(TimeBudget(time_budget_minutes * 60, spent_seconds=spent))
    # Under mixed precision, Adam sits inside a LossScaleOptimizer.
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    if getattr(optimizer, "use_ema", False):
        swap = keras.callbacks.SwapEMAWeights(swap_on_epoch=True)
        # A backup was written after the swap: the averaged weights in the model,
        # the raw ones in the optimizer. The first epoch of a resumed run swaps them back.
        swap._ema_weights_in_model = (output_dir / "backup" / "latest.weights.h5").exists()
        callbacks = [swap] + callbacks + [_KeepAveragedWeights(swap)]
    started = time.monotonic()
    # A tf.data pipeline shuffles itself (Keras would warn that its own shuffle does not apply).
    shuffle = not (tf is not None and isinstance(train_dataset, tf.data.Dataset))
    model.fit(train_dataset, validation_data=val_dataset, epochs=epochs,
              callbacks=callbacks, verbose=verbose, shuffle=shuffle)
    elapsed = time.monotonic() - started
    history = pd.read_csv(history_path) if history_path.exists() else pd.DataFrame()
    (output_dir / "training_time.json").write_text(json.dumps({"seconds": spent + elapsed,
                                                               "seconds_before_resume": spent}))
    if not history.empty and not np.all(np.isfinite(history["loss"])):
        print("The loss became NaN: training stopped; the last good epoch is kept in backup/.")
    return history


def _all_layers(layer):
    """A model's layers, those of the models nested in it included."""
    for child in getattr(layer, "layers", []):
        yield child
        yield from _all_layers(child)


def _check_input_scale(model: keras.Model, dataset, role: str) -> None:
    """Refuse integer images (0-255 bytes) for a model without ``SliceStandardization``, which expects [0, 1]."""
    from helpers.model import SliceStandardization

    spec = getattr(dataset, "element_spec", None)
    if tf is None or not isinstance(spec, tuple) or not spec:
        return
    images = [item for item in tf.nest.flatten(spec[0]) if hasattr(item, "dtype")]
    if not any(item.dtype.is_integer for item in images):
        return
    if not any(isinstance(layer, SliceStandardization) for layer in _all_layers(model)):
        raise ValueError(
            f"The {role} batches hold integer images (0-255), but model '{model.name}' has no "
            "SliceStandardization layer to standardise them, and expects images scaled to [0, 1]: "
            "build the dataset with make_dataset(..., image_dtype='float32')."
        )


def describe_device() -> str:
    """A one-line description of the GPUs that ``count_gpus`` finds, or of the CPU."""
    names = _gpu_names()
    if names:
        return f"{len(names)} GPU(s): {', '.join(names)}"
    import os

    return f"CPU only ({os.cpu_count()} cores)"


def command_line(script: str, arguments, positional: tuple[str, ...] = (), skip: tuple[str, ...] = (),
                 prefix: str = "") -> str:
    """The command that reruns a script with the arguments it was given, for its report.

    Every option given a value is written out, defaults included, so the
    command still means the same when a default changes later; options left
    unset (``None``, or an empty list) and switches left off are left out, as
    they were not given.

    Args:
        script: the script as run from the repository root, e.g.
            ``"benchmarks/quality.py"``, with a sub-command after it if any.
        arguments: the ``argparse.Namespace`` the script parsed.
        positional: names of positional arguments (written bare, in order).
        skip: names of arguments left out (a sub-command's own name, say).
        prefix: written before ``python``, e.g. ``"KERAS_BACKEND=jax"``.

    Returns:
        One line for a POSIX shell: switches that are on appear bare, lists
        as their values separated by spaces, each value quoted where needed.
    """
    import shlex

    parts = [f"{prefix} python {script}".strip()]
    for name, value in vars(arguments).items():
        if name in skip or value is None or value is False or (isinstance(value, list | tuple) and not value):
            continue
        text = " ".join(shlex.quote(str(item)) for item in (value if isinstance(value, list | tuple) else [value]))
        option = "--" + name.replace("_", "-")
        parts.append(text if name in positional else option if value is True else f"{option} {text}")
    return " ".join(parts)


def export_model(source: str | Path, destination: str | Path, dtype: str | None = None) -> Path:
    """Save a trained model without its optimizer state, for inference.

    Args:
        source: a ``.keras`` checkpoint.
        destination: the ``.keras`` file to write.
        dtype: a Keras dtype policy to put in place of every mixed one
            (``"float32"`` turns a model trained in ``mixed_bfloat16`` into
            one that computes in float32 on any machine; layers already in
            float32 are kept); ``None`` keeps each layer's own.

    Returns:
        The destination path.
    """
    trained = keras.models.load_model(source)
    # Rebuilt from its config, the model carries no optimizer (clone_model would
    # keep the compiled one, tripling the file with Adam's moment estimates).
    config = trained.get_config()
    if dtype is not None:
        config = _with_dtype_policy(config, dtype)
    clean = keras.Model.from_config(config)
    if dtype is not None:
        mixed = sorted({layer.dtype_policy.name for layer in clean.layers} - {dtype, "float32"})
        if mixed:
            raise ValueError(f"{source}: layers still compute in {mixed} after conversion to {dtype}; "
                             "this Keras version saves dtype policies in a form export_model does not know.")
    clean.set_weights(trained.get_weights())
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    clean.save(destination)
    return destination


def publish_model(checkpoint: str | Path, model_path: str | Path, dtype: str | None = "float32") -> bool:
    """Export a run's best checkpoint as the model the notebooks use, keeping the one it replaces.

    An earlier ``model_path`` is copied to ``<name>.previous.keras`` and the
    settings chosen for it (``<name>.json``, written by notebook 05) moved
    to ``<name>.previous.json``. A ``model_path`` newer than the checkpoint
    is already its export (a finished run opened again): it is left as it
    is, with its settings, and nothing is copied over the previous one.

    Args:
        checkpoint: the run's ``best.keras``.
        model_path: the ``.keras`` file to write (``ARTIFACTS_DIR/model.keras``).
        dtype: as in ``export_model``; float32 by default, so the model
            computes in float32 wherever it is loaded.

    Returns:
        True if the model was exported, False if the one there was kept.
    """
    checkpoint, model_path = Path(checkpoint), Path(model_path)
    if model_path.is_file() and model_path.stat().st_mtime_ns > checkpoint.stat().st_mtime_ns:
        return False
    if model_path.is_file():
        shutil.copy2(model_path, model_path.with_name(f"{model_path.stem}.previous.keras"))
    settings = model_path.with_suffix(".json")
    if settings.is_file():  # notebook 05's settings were chosen for the earlier model
        shutil.move(settings, model_path.with_name(f"{model_path.stem}.previous.json"))
    export_model(checkpoint, model_path, dtype=dtype)
    return True


def load_initial_weights(model: keras.Model, source: str | Path) -> keras.Model:
    """Start ``model`` from the weights of a saved network of the same architecture.

    For continuing a finished run with a new learning-rate schedule (a warm
    restart, as in SGDR: Loshchilov and Hutter, 2017): the optimizer starts
    afresh, only the weights carry over. The saved network may have trained
    in another dtype policy: its float32 weights fit a ``mixed_bfloat16``
    model, whose variables are float32 too.

    Args:
        model: a built model, e.g. from ``build_resunet``.
        source: a ``.keras`` file saved by notebook 04 or ``quality.py``.

    Returns:
        ``model``, its weights replaced.

    Raises:
        ValueError: naming ``source`` when its weights differ from the
            model's in number or shape (another width, input or channels).
    """
    saved = keras.models.load_model(source, compile=False).get_weights()
    current = model.get_weights()
    if [weight.shape for weight in saved] != [weight.shape for weight in current]:
        raise ValueError(f"{source}: its weights do not fit this model ({len(saved)} arrays against "
                         f"{len(current)}, or other shapes); build the model with the width, input size and "
                         "channels that network trained with.")
    model.set_weights(saved)
    return model


def kept_weight_files(run_dir: str | Path) -> dict[int, Path]:
    """The weights a run kept of every epoch (``train(keep_epochs=True)``), by epoch.

    Args:
        run_dir: the folder ``train`` wrote, e.g. notebook 04's
            ``artifacts/training`` or ``quality.py``'s ``OUT/run``.

    Returns:
        ``{epoch: path}`` of ``run_dir/epochs/epoch_NNN.weights.h5``, epochs
        counted from 1, in order; empty if the run kept none.
    """
    folder = Path(run_dir) / "epochs"
    return {int(path.name.split("_")[1].split(".")[0]): path for path in sorted(folder.glob("epoch_*.weights.h5"))}


def average_weights(model: keras.Model, weight_files) -> keras.Model:
    """Put in ``model`` the mean of the weights saved in several files.

    Averaging the weights of the epochs along one run, rather than keeping a
    single epoch, smooths out the epoch-to-epoch noise of the last stretch of
    training (stochastic weight averaging: Izmailov et al., 2018; "model
    soups" average fine-tuned networks the same way: Wortsman et al., 2022).
    Batch-normalisation statistics are averaged like the other weights, as
    model soups do, not recomputed.

    Args:
        model: a built model of the architecture the files were saved from,
            e.g. a run's ``best.keras`` loaded again.
        weight_files: ``.weights.h5`` files (``train(keep_epochs=True)``);
            one file gives its weights unchanged.

    Returns:
        ``model``, its weights replaced by their mean over the files.

    Raises:
        ValueError: if no file is given, or naming the file whose weights do
            not fit ``model``.
    """
    weight_files = [Path(path) for path in weight_files]
    if not weight_files:
        raise ValueError("average_weights: no weight files given; train with keep_epochs=True to keep them.")
    total = None
    for path in weight_files:
        try:
            model.load_weights(path)
        except ValueError as error:
            raise ValueError(f"{path}: its weights do not fit this model ({error}); give the files of a run "
                             "with this model's architecture.") from None
        weights = [weight.astype(np.float64) for weight in model.get_weights()]
        total = weights if total is None else [sum_ + weight for sum_, weight in zip(total, weights)]
    model.set_weights([(sum_ / len(weight_files)).astype(weight.dtype)
                       for sum_, weight in zip(total, model.get_weights())])
    return model


def recompute_batch_norm(model: keras.Model, images: np.ndarray, batch_size: int = 16) -> keras.Model:
    """Set every batch-normalisation layer's moving statistics to their mean over ``images``.

    Averaged weights (``average_weights``) were never trained together, so
    the moving means and variances they carry need not fit them; stochastic
    weight averaging recomputes them with one pass over the training data
    (Izmailov et al., 2018). Each batch's statistics count equally: the
    layers' momentum is set so that the moving value after batch k is the
    mean of the first k batches, and restored afterwards. Only the moving
    statistics change.

    Args:
        model: a model in float32 (``export_model`` gives one), with
            ``BatchNormalization`` layers, in it or in models nested in it.
        images: uint8 (N, H, W, 3) slices at the model's input size, values
            0-255, given to the model as prediction does (divided by 255).
        batch_size: slices per batch; the last batch may be smaller.

    Returns:
        ``model``, its moving statistics replaced.

    Raises:
        ValueError: if the model has no batch normalisation, or ``images``
            are empty.
    """
    norms = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    if not norms:
        raise ValueError("recompute_batch_norm: the model has no BatchNormalization layer.")
    if len(images) == 0:
        raise ValueError("recompute_batch_norm: no images given.")
    momenta = [layer.momentum for layer in norms]
    try:
        for step, start in enumerate(range(0, len(images), batch_size), start=1):
            for layer in norms:
                layer.momentum = (step - 1) / step
            model(images[start:start + batch_size].astype(np.float32) / 255.0, training=True)
    finally:
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum
    return model


def average_kept_epochs(run_dir: str | Path, first: int | None = None, last: int | None = None,
                        train_images: np.ndarray | None = None, batch_size: int = 16,
                        continued_by: Sequence[str | Path] = ()) -> tuple[keras.Model, list[int]]:
    """One float32 network from the epochs a run kept: their weights averaged, batch norm recomputed.

    The whole recipe of stochastic weight averaging as this project runs it
    (notebook 04 and ``benchmarks/weight_average.py``): ``average_weights``
    over the chosen epochs, ``export_model`` to float32 (so that the
    statistics are recomputed as the model will predict), then
    ``recompute_batch_norm`` over the training slices.

    Args:
        run_dir: the folder ``train(keep_epochs=True)`` wrote (``best.keras``
            and ``epochs/``).
        first: the first epoch averaged, counted from 1; ``None``: the second
            half of the run (``last // 2 + 1``), where the epochs wander about
            one level rather than still climbing.
        last: the last epoch averaged; ``None``: the run's last kept epoch.
            ``first == last`` gives that epoch's weights alone.
        train_images: uint8 (N, H, W, 3) training slices at the model's input
            size, values 0-255, to recompute the batch-norm statistics over;
            ``None`` keeps the averaged statistics.
        batch_size: slices per batch of that pass.
        continued_by: folders of runs that went on from this one's last
            epoch (``init_model``), in order; their kept epochs are numbered
            on after its own, so that one average can span them all. Not
            checked here; ``benchmarks/weight_average.py`` compares the
            weights each started from with the last epoch before it.

    Returns:
        ``(model, epochs)``: the averaged network, uncompiled and computing
        in float32, and the epochs averaged.

    Raises:
        FileNotFoundError: if a run kept no epochs.
        ValueError: if an epoch asked for was not kept, naming the folder
            and the epochs it holds.
    """
    folders = [Path(run_dir), *(Path(folder) for folder in continued_by)]
    files = {}
    for folder in folders:
        kept = kept_weight_files(folder)
        if not kept:
            raise FileNotFoundError(f"{folder / 'epochs'}: no epoch weights; train with keep_epochs=True "
                                    "(notebook 04's KEEP_EPOCHS, quality.py's --keep-epochs).")
        offset = max(files, default=0)
        files.update({offset + epoch: path for epoch, path in kept.items()})
    where = " and ".join(str(folder / "epochs") for folder in folders)
    last = max(files) if last is None else last
    first = last // 2 + 1 if first is None else first
    held = (f"({'they hold' if continued_by else 'it holds'} {min(files)} to {max(files)}); "
            "choose the first and last epochs among them.")
    if first > last:
        raise ValueError(f"{where}: the first epoch averaged, {first}, comes after the last, {last} {held}")
    epochs = list(range(first, last + 1))
    missing = [epoch for epoch in epochs if epoch not in files]
    if missing:
        raise ValueError(f"{where}: no weights for epochs {missing} {held}")
    model = average_weights(keras.models.load_model(Path(run_dir) / "best.keras", compile=False),
                            [files[epoch] for epoch in epochs])
    with tempfile.TemporaryDirectory() as scratch:
        model.save(Path(scratch) / "averaged.keras")
        exported = export_model(Path(scratch) / "averaged.keras", Path(scratch) / "exported.keras", dtype="float32")
        model = keras.models.load_model(exported, compile=False)
    if train_images is not None:
        recompute_batch_norm(model, train_images, batch_size)
    return model, epochs


def _with_dtype_policy(config, dtype: str):
    """A copy of a model config computing in ``dtype`` wherever it used a mixed policy.

    Mixed policies (``mixed_bfloat16``...) become ``dtype`` wherever a layer
    names one: as a serialized ``DTypePolicy`` (or ``FloatDTypePolicy``), or
    as a plain string. The half-precision dtypes recorded for the tensors
    between layers (``"bfloat16"`` in ``inbound_nodes``) become ``dtype`` too.
    Everything else, the float32 output layer included, is kept.
    """
    if isinstance(config, dict):
        if str(config.get("class_name", "")).endswith("DTypePolicy") and isinstance(config.get("config"), dict):
            name = str(config["config"].get("name", ""))
            return {**config, "config": {**config["config"], "name": dtype}} if name.startswith("mixed_") else config
        return {key: (dtype if key == "dtype" and isinstance(value, str)
                      and (value.startswith("mixed_") or value in ("bfloat16", "float16"))
                      else _with_dtype_policy(value, dtype)) for key, value in config.items()}
    if isinstance(config, list):
        return [_with_dtype_policy(value, dtype) for value in config]
    return config


# Settings that may differ between a run and its resumption: where it runs and how long.
RESUMABLE_CHANGES = ("name", "device", "epochs", "time_budget_minutes", "mixed_precision", "patience")
# Settings that runs recorded only from some day on: a run without them is not refused for lacking them.
LATER_SETTINGS = ("split",)


def changed_settings(previous: dict, settings: dict) -> str:
    """The settings that differ between a recorded run and now, beyond ``RESUMABLE_CHANGES``.

    Args:
        previous: the settings a run recorded (its ``settings.json``).
        settings: the settings given now.

    Returns:
        ``"key: old there, new now"`` for each difference, joined by
        commas; empty when none differs.
    """
    keys = (set(previous) | set(settings)) - set(RESUMABLE_CHANGES)
    keys -= {key for key in LATER_SETTINGS if key not in previous}
    changed = sorted(key for key in keys if previous.get(key) != settings.get(key))
    return ", ".join(f"{key}: {previous.get(key)!r} there, {settings.get(key)!r} now" for key in changed)


def check_run_split(run_dir: str | Path, fingerprint: str, model_path: str | Path | None = None) -> None:
    """Refuse to score a run's model on a split other than the one it was trained on.

    Args:
        run_dir: the run folder (``ARTIFACTS_DIR/training``).
        fingerprint: this split's ``helpers.preprocessing.split_fingerprint``.
        model_path: the model about to be scored (``ARTIFACTS_DIR/model.keras``),
            which must be this run's export: ``publish_model`` writes it
            after the run's ``best.keras``, so an older file comes from an
            earlier run (moved aside by ``RESUME = False``), perhaps on
            another split.

    Raises:
        ValueError: naming ``settings.json``, when the run recorded another
            split (some of today's validation or test patients may be
            patients it trained on), or naming the model, when it is not the
            run's. A run that recorded no split passes the first check.
    """
    run_dir = Path(run_dir)
    settings_path = run_dir / "settings.json"
    if not settings_path.is_file():
        return
    recorded = json.loads(settings_path.read_text()).get("split")
    if recorded is not None and recorded != fingerprint:
        raise ValueError(
            f"{settings_path}: the model was trained on another split ({recorded}; split.csv now: {fingerprint}), "
            "so some validation or test patients here may be patients it trained on. Run notebook 04 again with "
            "RESUME = False to train on this split, or run notebook 02 with the parameters that made the old one."
        )
    checkpoint = run_dir / "best.keras"
    if model_path is not None and Path(model_path).is_file() and (
            not checkpoint.is_file() or Path(model_path).stat().st_mtime_ns < checkpoint.stat().st_mtime_ns):
        raise ValueError(
            f"{model_path} is not the model of the run in {run_dir} (which has "
            f"{'a newer best.keras' if checkpoint.is_file() else 'no best.keras yet'}): it comes from an earlier "
            "run, perhaps on another split. Run notebook 04 to the end to export this run's model, or give "
            "MODEL_PATH to score another model on purpose."
        )


def prepare_run(run_dir: str | Path, settings: dict, resume: bool = True,
                what_to_do: str = "Set RESUME = False to move it aside and train anew, or set the parameters "
                                  "back to continue it.") -> str:
    """Decide what happens to the run folder before training: start, resume or keep.

    Notebook 04 calls this before ``train``. The settings are written to
    ``run_dir/settings.json`` and compared with those of a run already
    there, so that running the notebook again never continues a run with
    another model, and never trains a finished run a second time.

    Args:
        run_dir: the run folder (``ARTIFACTS_DIR/training``).
        settings: everything that defines the run: the profile and the
            model, loss and optimizer choices (JSON-serialisable values).
            Those named in ``RESUMABLE_CHANGES`` (device, epochs, budget)
            may change on resumption.
        resume: ``False`` moves a run already there aside, to
            ``training_<date-time>`` beside it, and starts anew.
        what_to_do: the advice that ends the message refusing a run with
            other settings, and the warning about a run without
            ``settings.json`` (a script names its own options).

    Returns:
        ``"new"`` (no run there, or only the ``settings.json`` of one that
        failed before it trained: train), ``"resume"`` (a run stopped before
        it ended, by a crash or a lost connection: train, and ``train``
        continues at its last epoch) or ``"finished"`` (a run that ended,
        by its epochs, its budget, early stopping or a NaN loss: do not
        train again; its ``history.csv`` and ``best.keras`` are the result).

    Raises:
        ValueError: if the run there was trained with other settings; the
            message names the file, the differences and what to do.

    Warns:
        UserWarning: if a run there has no ``settings.json`` to compare with.
    """
    run_dir = Path(run_dir)
    settings_path = run_dir / "settings.json"
    # settings.json alone is a run that failed before its first step (data missing, a bad parameter):
    # nothing trained, so it starts anew with today's settings.
    started = run_dir.is_dir() and any(path.name != settings_path.name for path in run_dir.iterdir())
    if started and not resume:
        kept = run_dir.with_name(f"{run_dir.name}_{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(kept)
        print(f"Moved the previous run to {kept}")
        started = False
    previous = json.loads(settings_path.read_text()) if started and settings_path.is_file() else {}
    if started and settings_path.is_file():
        listed = changed_settings(previous, settings)
        if listed:
            raise ValueError(
                f"{run_dir} holds a run trained with other settings ({listed}; see {settings_path}). {what_to_do}"
            )
    elif started:
        warnings.warn(f"{run_dir} holds a run without {settings_path.name} (written before runs recorded their "
                      "settings): they cannot be compared, so it is taken as trained with today's. If it was not: "
                      f"{what_to_do}", stacklevel=2)
    unrecorded = [key for key in LATER_SETTINGS if started and key in settings and key not in previous]
    if unrecorded:
        # Not recorded as if the run had started on today's values: it may not have (another split, say).
        settings = {key: value for key, value in settings.items() if key not in unrecorded}
        if settings_path.is_file():
            warnings.warn(f"{settings_path} records no {', '.join(unrecorded)} (the run began before runs recorded "
                          "it), so it cannot be checked: if notebook 02 has drawn another split since, the run's "
                          f"validation or test patients may include patients it trained on. {what_to_do}",
                          stacklevel=2)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = "new" if not started else ("finished" if (run_dir / "training_time.json").is_file() else "resume")
    # A finished run is not trained again, so its record keeps the settings it was trained with
    # (a longer budget asked for now never ran).
    if state != "finished" or not settings_path.is_file():
        settings_path.write_text(json.dumps(settings, indent=2))
    return state
