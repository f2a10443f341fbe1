"""The input pipelines `keras-sepseq bench` compares keras_sepseq with, written the way their users write them."""

from __future__ import annotations

import numpy as np

__all__ = ["generator", "pil_load", "plain_pydataset", "tf_augmented_pipeline", "tf_pipeline"]


def tf_pipeline(paths, labels, size, batch_size, seed):
    import tensorflow as tf

    def load(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.image.convert_image_dtype(image, tf.float32)
        return tf.image.resize(image, size), label

    ds = tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels)))
    ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def pil_load(path: str, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return (
            np.asarray(image.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.float32)
            / 255.0
        )


def generator(paths, labels, size, batch_size, seed):
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(paths))
        for start in range(0, len(paths), batch_size):
            chosen = order[start : start + batch_size]
            yield np.stack([pil_load(paths[i], size) for i in chosen]), np.asarray(labels)[chosen]


def plain_pydataset(paths, labels, size, batch_size, workers):
    import keras

    class Plain(keras.utils.PyDataset):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.order = np.arange(len(paths))

        def __len__(self):
            return -(-len(paths) // batch_size)

        def __getitem__(self, i):
            chosen = self.order[i * batch_size : (i + 1) * batch_size]
            return np.stack([pil_load(paths[j], size) for j in chosen]), np.asarray(labels)[chosen]

        def on_epoch_end(self):
            np.random.shuffle(self.order)

    return Plain(workers=workers)


def tf_augmented_pipeline(paths, labels, size, batch_size, seed, margin):
    """`tf_pipeline` with the usual augmentation in its `map`: resize `margin` larger, random crop back to
    `size`, random horizontal flip and brightness, all in `tf.image`."""
    import tensorflow as tf

    larger = (size[0] + margin, size[1] + margin)

    def load(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.image.resize(tf.image.convert_image_dtype(image, tf.float32), larger)
        image = tf.image.random_crop(image, (size[0], size[1], 3))
        image = tf.image.random_flip_left_right(image)
        return tf.clip_by_value(tf.image.random_brightness(image, 0.1), 0.0, 1.0), label

    ds = tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels)))
    ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
