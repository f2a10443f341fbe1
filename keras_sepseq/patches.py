"""`PatchSequence`: random patches of fixed size cut from volumes, several per volume per epoch.

A sample is a `(volume, slot)` pair: `samples_per_file=k` slots per volume,
each served exactly once per epoch. Where a patch sits is drawn from
`numpy.random.default_rng([seed, epoch, volume, slot, 5])`, so it is the
same in every worker mode and after `set_state`, and differs between
epochs. A chosen share of the slots is centred on a foreground voxel of a
label volume (MONAI's positive/negative sampling), the rest anywhere.

The epoch's order keeps a volume's patches apart and close: volumes are
shuffled and taken `batch_size` at a time (the last few join the window
before), and each window is served as `k` rounds, a round holding one
patch of each of its volumes in a shuffled order. A volume is therefore
needed for about `k` neighbouring batches only, decoded once for all of
them (`VolumeStore`), and no batch holds two patches of one volume (when
there are at least `batch_size` volumes).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from keras_sepseq.cache import fingerprint
from keras_sepseq.checks import check_int
from keras_sepseq.errors import CacheBudgetError, SampleError
from keras_sepseq.field_sequence import Fields, FieldSequence
from keras_sepseq.fields import ArrayField
from keras_sepseq.order import epoch_order
from keras_sepseq.volume_fields import LabelVolumeField, VolumeField
from keras_sepseq.volume_store import Entry, VolumeStore

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from keras_sepseq.options import SequenceOptions

__all__ = ["PatchSequence"]


class PatchSequence(FieldSequence):
    """Batches of fixed-size patches cut from volume fields, `samples_per_file` per volume per epoch.

    Every field is a `VolumeField`, a `LabelVolumeField` (same geometry
    keywords, so every volume of a sample shares one voxel grid) or an
    `ArrayField` of values per volume (repeated for each of its patches).
    Patches reaching outside a volume (one smaller than `patch_size`) are
    filled with 0 in scans and `ignore_index` (or 0) in label volumes.

    Args:
        inputs: A field, or a dict of fields by name.
        targets: A field, a dict of fields by name, or `None`.
        batch_size: Patches per batch; also how many volumes are worked on
            at once (see the module). Defaults to 32.
        patch_size: `(d, h, w)` of every patch.
        samples_per_file: Patches per volume per epoch. Defaults to 1.
        foreground: The name of the `LabelVolumeField` whose foreground
            (class ids above 0 other than `ignore_index`) positive patches
            centre on; `"auto"` (the default) takes the only one there is,
            `None` draws every patch anywhere.
        foreground_share: The share of each volume's slots centred on
            foreground (rounded to whole slots). Defaults to 0.5. A volume
            without foreground gets random patches instead and is reported
            once, by name, in a warning.
        volumes_in_memory: How many decoded volumes each process keeps;
            `None` (the default) keeps enough for the batches in flight.
            With `cache="memory"`, every volume is kept.
        sample_weights: One weight per volume, or `None`.
        **options: The options every sequence shares (see `BaseSequence`).
            `cache="memory"` keeps every decoded volume; `cache=<folder>`
            writes decoded volumes there as `.npy` files read back
            memory-mapped by every process, so later epochs decode
            nothing. Patches themselves are never cached: they are drawn
            anew every epoch.

    Raises:
        ValueError: If an argument is out of range, or a field is not a
            volume or per-volume values; the message names it.

    Example:

    >>> seq = PatchSequence(  # doctest: +SKIP
    ...     {"ct": VolumeField(ct_paths, spacing=(1.5, 1.5, 1.5), window=(-1000, 1000))},
    ...     {"organs": LabelVolumeField(label_paths, spacing=(1.5, 1.5, 1.5), num_classes=4)},
    ...     batch_size=4, patch_size=(64, 64, 64), samples_per_file=8, foreground_share=0.5,
    ... )
    >>> model.fit(seq, epochs=100)  # doctest: +SKIP
    """

    def __init__(
        self,
        inputs: Fields,
        targets: Fields | None = None,
        batch_size: int = 32,
        *,
        patch_size: Sequence[int],
        samples_per_file: int = 1,
        foreground: str | None = "auto",
        foreground_share: float = 0.5,
        volumes_in_memory: int | None = None,
        sample_weights: Any = None,
        **options: Unpack[SequenceOptions],
    ) -> None:
        if not isinstance(patch_size, (tuple, list)) or len(patch_size) != 3:
            raise ValueError(f"`patch_size` must be three integers (d, h, w). Received: patch_size={patch_size!r}")
        self.patch_size = tuple(check_int("patch_size", p, minimum=1) for p in patch_size)
        self.samples_per_file = check_int("samples_per_file", samples_per_file, minimum=1)
        share = foreground_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise ValueError(f"`foreground_share` must be a number in [0, 1]. Received: foreground_share={share!r}")
        self.foreground_share = float(share)
        self.volumes_in_memory = None if volumes_in_memory is None else check_int(
            "volumes_in_memory", volumes_in_memory, minimum=1
        )  # fmt: skip
        super().__init__(inputs, targets, batch_size, sample_weights=sample_weights, **options)
        self.num_volumes = self.num_samples // self.samples_per_file
        for name, field in self.fields:
            if not isinstance(field, VolumeField) and not (isinstance(field, ArrayField) and field.in_memory):
                raise ValueError(
                    f"the field {name!r} is a {type(field).__name__}: a PatchSequence takes VolumeField, "
                    "LabelVolumeField, and ArrayField values in memory (one per volume)."
                )
        self.foreground = self._foreground_field(foreground)
        self.positive_slots = round(self.samples_per_file * self.foreground_share) if self.foreground else 0
        if self.sample_weights is not None:
            self.sample_weights = np.repeat(self.sample_weights, self.samples_per_file)
        self._reported: set[int] = set()
        self._store: VolumeStore | None = None

    def _foreground_field(self, foreground: str | None) -> str | None:
        labels = [name for name, field in self.fields if isinstance(field, LabelVolumeField)]
        if foreground == "auto":
            return labels[0] if len(labels) == 1 else None
        if foreground is not None and foreground not in labels:
            raise ValueError(
                f"`foreground` must name a LabelVolumeField of this sequence ({', '.join(labels) or 'it has none'}). "
                f"Received: foreground={foreground!r}"
            )
        return foreground

    # Order: (volume, slot) samples, by windows of batch_size volumes (see the module).

    def init_order(self, num_samples: int, batch_size: int, **settings: Any) -> None:
        """The order settings, over `num_samples` volumes times `samples_per_file` slots."""
        if settings["num_shards"] > num_samples:
            raise ValueError(f"`num_shards`={settings['num_shards']} is more than the {num_samples} volumes.")
        self._volumes = num_samples
        super().init_order(num_samples * self.samples_per_file, batch_size, **settings)

    @property
    def shard_size(self) -> int:
        """Patches this shard serves per epoch: its volumes times `samples_per_file`."""
        n, shards = self._volumes, self.num_shards
        volumes = n if shards == 1 else (n // shards if self.drop_remainder else math.ceil(n / shards))
        return volumes * self.samples_per_file

    def shard_members(self, epoch: int) -> np.ndarray:
        """This shard's `(volume, slot)` samples (`volume * samples_per_file + slot`) in the epoch's order.

        Shards split the volumes (every `num_shards`-th of the epoch's
        volume order, wrapping around as `BaseSequence` does with samples),
        so each volume is decoded by one host.

        Args:
            epoch: The epoch number.

        Returns:
            `shard_size` sample indices.
        """
        k, shards = self.samples_per_file, self.num_shards
        volumes = epoch_order(self._volumes, seed=self.seed, epoch=epoch, shuffle=self.shuffle)
        if shards > 1:
            size = self.shard_size // k
            if not self.drop_remainder:
                volumes = np.concatenate([volumes, volumes[: size * shards - self._volumes]])
            volumes = volumes[self.shard_index :: shards][:size]
        rng = np.random.default_rng([self.seed, epoch, 6])
        window = self.batch_size
        starts = list(range(0, len(volumes), window))
        if len(starts) > 1 and len(volumes) - starts[-1] < window:
            starts.pop()  # the last, smaller window joins the one before: every round holds batch_size volumes or more
        order: list[int] = []
        for start, end in zip(starts, starts[1:] + [len(volumes)]):
            group = volumes[start:end]
            slots = [rng.permutation(k) if self.shuffle else np.arange(k) for _ in group]
            for j in range(k):
                shuffled = (rng.permutation(len(group)) if self.shuffle else np.arange(len(group))).tolist()
                # The batch being filled must not get a second patch of a volume it holds: those go later.
                present = {v // k for v in order[len(order) - len(order) % self.batch_size :]}
                later = [m for m in shuffled if group[m] in present]
                members = [m for m in shuffled if group[m] not in present] + later
                order.extend(int(group[m]) * k + int(slots[m][j]) for m in members)
        return np.asarray(order, dtype=np.int64)

    def _order_settings(self) -> dict:
        return {**super()._order_settings(), "samples_per_file": self.samples_per_file}

    # Loading: decoded volumes from the store, then a patch per (volume, slot).

    def sample_cache(self) -> None:
        """`None`: patches are drawn anew every epoch; volumes are kept by the store instead (`cache`)."""
        return None

    def volume_store(self) -> VolumeStore:
        """This process's `VolumeStore` (created on first use).

        Returns:
            The store.
        """
        if self._store is None:
            capacity = None if self.cache == "memory" else self.volumes_in_memory
            if capacity is None and self.cache != "memory":
                windows = math.ceil((self.max_queue_size + 1) / self.samples_per_file) + 1  # batches in flight
                capacity = 2 * self.batch_size * windows  # a window holds fewer than 2 * batch_size volumes
            directory = None
            if self.cache not in (None, "memory"):
                directory = os.path.join(str(self.cache), "volumes-" + fingerprint(*self.cache_key()))
            budget = self.cache_budget if self.cache == "memory" else None
            self._store = VolumeStore(capacity, directory, self.path_columns() if directory else (), budget=budget)
        return self._store

    @property
    def volume_stats(self) -> dict[str, int]:
        """Volumes decoded and reused in this process so far (`decodes`, `hits`, `in_memory`, and the
        `bytes_in_memory` they hold, memory maps not counted).

        Example:

        >>> seq.volume_stats["decodes"]  # doctest: +SKIP
        12
        """
        return self.volume_store().stats()

    def _load_volume(self, volume: int) -> Entry:
        items = FieldSequence.load_item(self, volume)
        foreground = None
        if self.foreground is not None:
            k = [name for name, _ in self.fields].index(self.foreground)
            foreground = cast(LabelVolumeField, self.fields[k][1]).foreground(items[k])
        shapes = {
            name: np.shape(item)[:3]
            for (name, field), item in zip(self.fields, items)
            if isinstance(field, VolumeField)
        }
        if len(set(shapes.values())) > 1:
            files = ", ".join(f"{name}: {self.fields_path(name, volume)!r} {shape}" for name, shape in shapes.items())
            raise ValueError(
                f"the volumes of sample {volume} have different shapes ({files}); give every volume field "
                "the same `spacing` or `shape`"
            )
        return items, foreground

    def fields_path(self, name: str, volume: int) -> str | None:
        """The file of field `name` for `volume`."""
        return dict(self.fields)[name].path(volume)

    def load_item(self, index: int) -> tuple:
        """Sample `index` = `(volume, slot)`: its volume from the store, and the slot's patch of every field.

        Args:
            index: `volume * samples_per_file + slot`.

        Returns:
            One patch per field (values in memory as they are), then the
            volume's path if a foreground patch fell back to a random one
            (else `None`).

        Raises:
            SampleError: If a volume cannot be loaded; names the file.
            ValueError: If the volumes of a sample differ in shape.
        """
        volume, slot = divmod(int(index), self.samples_per_file)
        try:
            items, foreground = self.volume_store().get(volume, lambda: self._load_volume(volume))
        except SampleError as e:
            raise SampleError(f"volume {volume}: {e.reason}", path=e.path, index=int(index)) from e.__cause__
        except CacheBudgetError:
            raise  # the run stops: no sample is at fault
        except ValueError as e:
            raise SampleError(f"volume {volume}: {e}", path=self.sample_path(index), index=int(index)) from e
        start, fell_back = self.patch_start(volume, slot, items, foreground)
        patches = []
        for (_, field), item in zip(self.fields, items):
            if isinstance(field, VolumeField):
                fill = getattr(field, "ignore_index", None) or 0
                patches.append(_cut(item, start, self.patch_size, fill))
            else:
                patches.append(field.values[volume])
        return (*patches, self.fields_path(cast(str, self.foreground), volume) if fell_back else None)

    def patch_start(self, volume: int, slot: int, items: tuple, foreground: np.ndarray | None) -> tuple[tuple, bool]:
        """Where the patch of `(volume, slot)` starts, and whether a foreground patch fell back to a random one.

        Slots below `positive_slots` centre on a foreground voxel drawn
        uniformly (kept inside the volume where it fits); the others start
        anywhere the patch fits. Draws come from
        `default_rng([seed, epoch, volume, slot, 5])`.

        Args:
            volume: The volume index.
            slot: The slot.
            items: The volume's items.
            foreground: Its foreground voxels (flat indices), or `None`.

        Returns:
            `((d, h, w) start, fell_back)`; a start may be negative where
            the volume is smaller than the patch.
        """
        shape = next(np.shape(item)[:3] for (_, f), item in zip(self.fields, items) if isinstance(f, VolumeField))
        rng = np.random.default_rng([self.seed, self.epoch_being_loaded, volume, slot, 5])
        positive = slot < self.positive_slots
        if positive and foreground is not None and len(foreground):
            centre = np.unravel_index(int(foreground[rng.integers(len(foreground))]), shape)
            start = tuple(
                (s - p) // 2 if s < p else min(max(int(c) - p // 2, 0), s - p)
                for c, s, p in zip(centre, shape, self.patch_size)
            )  # fmt: skip
            return start, False
        start = tuple(
            (s - p) // 2 if s < p else int(rng.integers(0, s - p + 1)) for s, p in zip(shape, self.patch_size)
        )
        return start, positive

    def collate(self, indices: np.ndarray, items: list, position: int | None = None) -> tuple:
        """Batches the patches; warns once per volume whose foreground patches fell back to random ones."""
        n = len(self.fields)
        for index, item in zip(indices, items):
            if len(item) > n and item[n] is not None and int(index) // self.samples_per_file not in self._reported:
                self._reported.add(int(index) // self.samples_per_file)
                warnings.warn(
                    f"keras_sepseq: the label volume {item[n]!r} has no foreground voxel "
                    f"(field {self.foreground!r}); its foreground patches are drawn anywhere.",
                    stacklevel=2,
                )
        return super().collate(indices, [item[:n] for item in items], position)

    def output_signature(self) -> tuple:
        """`FieldSequence.output_signature` with every volume field's spatial size set to `patch_size`."""
        import tensorflow as tf

        volumes = {name for name, field in self.fields if isinstance(field, VolumeField)}

        def sized(name: str, spec: Any) -> Any:
            if name not in volumes:
                return spec
            shape = list(spec.shape)
            shape[1:4] = self.patch_size
            return tf.TensorSpec(shape, spec.dtype)

        signature = list(super().output_signature())
        n = self.input_count
        parts = [(self._input_names, self.fields[0][0])]
        if len(signature) > 1 and self._target_names != {}:
            parts.append((self._target_names, self.fields[n][0] if len(self.fields) > n else ""))
        for k, (names, single) in enumerate(parts):
            if names is None:
                signature[k] = sized(single, signature[k])
            else:
                signature[k] = {name: sized(name, spec) for name, spec in signature[k].items()}
        return tuple(signature)

    def sample_path(self, index: int) -> str | None:
        """The first file of the volume of sample `index`."""
        return super().sample_path(int(index) // self.samples_per_file)

    def sample_urls(self, index: int) -> list[str]:
        """The URLs of the volume of sample `index`."""
        return super().sample_urls(int(index) // self.samples_per_file)

    def cache_key(self) -> tuple:
        """The fields' settings and paths (volumes are what a directory cache holds)."""
        return super().cache_key() + ("volumes",)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_store"] = None  # each process keeps its own; a directory is shared through files
        return state


def _cut(volume: np.ndarray, start: Sequence[int], size: Sequence[int], fill: Any) -> np.ndarray:
    """The block of `volume` at `start` of `size` (spatial axes), filled with `fill` outside it."""
    inside = all(0 <= a and a + p <= s for a, p, s in zip(start, size, volume.shape))
    if inside:
        return np.array(volume[tuple(slice(a, a + p) for a, p in zip(start, size))])
    out = np.full(tuple(size) + volume.shape[3:], fill, dtype=volume.dtype)
    source, target = [], []
    for a, p, s in zip(start, size, volume.shape):
        lo, hi = max(a, 0), min(a + p, s)
        source.append(slice(lo, hi))
        target.append(slice(lo - a, hi - a))
    out[tuple(target)] = volume[tuple(source)]
    return out
