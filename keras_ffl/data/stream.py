"""The training stream of an in-memory dataset, in NumPy: the same batches on every backend.

Every random choice of an epoch (the shuffle order, each example's crop and flip) is drawn
at once from a counter-based generator (Philox) keyed by ``(seed, epoch)``: no hidden state,
so epoch k is the same whether the run started there or reached it, and a run killed and
resumed sees the batches an uninterrupted one saw.  Draws are indexed by an example's
*position* in the epoch, never by a batch, so splitting a global batch across replicas or
workers changes neither the examples nor their augmentation.

``EpochBatches`` assembles any batch of any epoch from positions; the TensorFlow pipeline
calls it through ``tf.numpy_function`` (``keras_ffl.data.tf_pipeline``) and the other
backends iterate ``batches`` (with a prefetching thread), so both feed bit-identical
batches to the model.
"""

import collections
import queue
import threading

import numpy as np

from keras_ffl.data import augment

#: Key words of the generator: (seed, epoch, stream); streams keep the order and the
#: augmentation draws independent.
ORDER, AUGMENT, VIEWS, NEGATIVES = 0, 1, 2, 3


def generator(seed, epoch, stream, view=0):
    """A generator that is a pure function of its key words (SeedSequence hashes them; its
    output is stable across NumPy versions and platforms)."""
    key = np.random.SeedSequence([int(seed) % 2**63, int(epoch), int(stream), int(view)])
    return np.random.Generator(np.random.Philox(key))


class EpochBatches:
    """Batches of one in-memory split: ``images`` uint8 [N, H, W, C], ``labels`` [N].

    ``recipe`` is an ``augment.Recipe`` (or None: no augmentation); ``views`` > 1 gives each
    example that many independently augmented copies (KDCL, PCL), ``with_index`` adds each
    example's index in the dataset (MCL-OKD's memory bank) and ``negatives`` = k adds its
    contrast indices: the index, then k examples of other classes drawn uniformly (without
    replacement unless k exceeds them: CRD's "exact" sampling), keyed by the example's
    position like every other draw.  Inputs are then a dict ``{"images": [B, H, W, C],
    "views": [B, V, H, W, C], "index": [B], "contrast": [B, k + 1]}``.
    """

    def __init__(self, images, labels, seed, mean, std, recipe=None, views=1, with_index=False, shuffle=True,
                 negatives=0):
        self.images, self.labels = images, np.asarray(labels, np.int64)
        self.seed, self.mean, self.std = seed, mean, std
        self.recipe, self.views, self.shuffle = recipe, views, shuffle
        self.negatives = int(negatives)
        self.with_index = with_index or self.negatives > 0
        if self.negatives:
            self.by_class = np.argsort(self.labels, kind="stable")
            counts = np.bincount(self.labels)
            self.class_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
            self.class_count = counts
        self._plans = collections.OrderedDict()
        self._lock = threading.Lock()

    @property
    def size(self):
        return len(self.labels)

    def plan(self, epoch):
        """``(order, [per-view draws])`` of an epoch, computed once and kept for the two most
        recent epochs (pipeline threads ask for the same epoch many times)."""
        epoch = int(epoch)
        with self._lock:
            if epoch in self._plans:
                return self._plans[epoch]
        order = generator(self.seed, epoch, ORDER).permutation(self.size) if self.shuffle else np.arange(self.size)
        draws = [
            self.recipe.draw(generator(self.seed, epoch, AUGMENT if view == 0 else VIEWS, view), self.size)
            if self.recipe is not None else None
            for view in range(self.views)
        ]
        with self._lock:
            self._plans[epoch] = (order, draws)
            while len(self._plans) > 2:
                self._plans.popitem(last=False)
        return order, draws

    def view(self, index, draws, positions):
        batch = self.images[index]
        if self.recipe is not None:
            batch = self.recipe.apply(batch, {k: v[positions] for k, v in draws.items()})
        return augment.normalize(batch, self.mean, self.std)

    def batch(self, epoch, positions):
        """``(inputs, labels)`` for the examples at ``positions`` of ``epoch``."""
        positions = np.asarray(positions, np.int64)
        order, draws = self.plan(epoch)
        index = order[positions]
        images = [self.view(index, d, positions) for d in draws]
        labels = self.labels[index]
        if self.views == 1 and not self.with_index:
            return images[0], labels
        inputs = {"images": images[0]}
        if self.views > 1:
            inputs["views"] = np.stack(images, axis=1)
        if self.with_index:
            inputs["index"] = index
        if self.negatives:
            inputs["contrast"] = np.stack([self.contrast(int(epoch), p, i) for p, i in zip(positions, index)])
        return inputs, labels

    def contrast(self, epoch, position, index):
        """``[index, k negatives]``: examples of other classes, uniformly, for the example at
        ``position`` of ``epoch``."""
        label = self.labels[index]
        start, count = self.class_start[label], self.class_count[label]
        pool = self.size - count
        rng = generator(self.seed, epoch, NEGATIVES, position)
        drawn = rng.choice(pool, size=self.negatives, replace=self.negatives > pool)
        drawn = np.where(drawn < start, drawn, drawn + count)  # skip the example's own class block
        return np.concatenate([[index], self.by_class[drawn]])

    def epoch_positions(self, batch_size, steps):
        """Position ranges of the ``steps`` batches of one epoch (the last may be short)."""
        return [np.arange(start, min(start + batch_size, self.size)) for start in
                range(0, min(steps * batch_size, self.size), batch_size)]

    def batches(self, start_epoch, batch_size, steps, prefetch=4, shard=(0, 1)):
        """The endless stream from ``start_epoch``, ``steps`` batches an epoch, assembled in a
        background thread ``prefetch`` batches ahead; ``shard`` keeps this process's share of
        each batch."""

        def produce():
            epoch = start_epoch
            while True:
                for positions in self.epoch_positions(batch_size, steps):
                    yield self.batch(epoch, share(positions, shard))
                epoch += 1

        return prefetched(produce(), prefetch)


def share(positions, shard):
    """Process ``index`` of ``count``'s contiguous share of a batch's positions."""
    index, count = shard
    positions = np.asarray(positions, np.int64)
    return np.array_split(positions, count)[index] if count > 1 else positions


def prefetched(iterator, depth):
    """Runs ``iterator`` in a daemon thread, ``depth`` items ahead; re-raises its errors.  The
    thread stops when the consumer is closed or collected."""
    if depth <= 0:
        yield from iterator
        return
    items, stop, done = queue.Queue(maxsize=depth), threading.Event(), object()

    def put(item):
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in iterator:
                if not put(item):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(e)
            return
        put(done)

    threading.Thread(target=work, daemon=True).start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
