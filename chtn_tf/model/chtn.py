"""The Cross-modal Hybrid Transfer Network as a Keras 3 model with the hybrid objective in ``train_step``.

Image inputs are feature vectors: backbone features of raw images (computed once and cached while the
backbone is frozen) or precomputed features such as Wikipedia's SIFT. Text inputs are the vectoriser's
bag-of-words rows in training (a run vectorises its texts once) and raw strings in the text encoder, which
vectorises them in the graph. :meth:`CHTNModel.image_encoder` and :meth:`CHTNModel.text_encoder` are
functional models that map one modality to the common representation; they share the trained layers.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from chtn_tf import losses as chtn_losses
from chtn_tf.model import cross_replica, linear
from chtn_tf.model.branches import (
    build_correlation_head,
    build_image_branch,
    build_source_classifier,
    build_text_branch,
)
from chtn_tf.model.config import ExperimentConfig

# Classes of the ImageNet classifier a split backbone's source branch keeps.
IMAGENET_CLASSES = 1000
LOSS_TERMS = ("source_ce", "image_ce", "text_ce", "mmd_fc6", "mmd_fc7", "pair_fc6", "pair_fc7")


class CHTNModel(keras.Model):
    """CHTN: source image, target image and text branches tied by MMD and pair losses, and a shared head.

    Batches are dicts ``{"target": {"image": float[b, d], "bag_of_words": float[b, vocabulary], "label": int[b]},
    "source": {"image": float[b, d], "label": int[b]}}``; ``"source"`` is absent when the run has no
    source domain (or the "no source transfer" ablation). ``bag_of_words`` holds the text vectoriser's rows of
    the pairs' texts, dense or a ``tf.SparseTensor`` (a run vectorises its texts once:
    :func:`chtn_tf.model.text.vectorize_texts`); raw ``"text": string[b]`` instead is vectorised in the step.

    Args:
        config: the experiment config (network shape and loss weights are read from it).
        image_feature_dim: width of the image feature vectors.
        num_classes: number of target classes.
        text_vectorizer: an adapted ``TextVectorization`` (see :mod:`chtn_tf.model.text`).
        num_source_classes: number of source-domain classes; 0 when there is no source domain (1000 with a
            ``split_backbone``: the source labels are ImageNet classes and its own classifier is trained).
        split_backbone: with ``config.model.image_top_blocks`` > 0, the
            :class:`~chtn_tf.backbones.split.SplitBackbone` whose trainable top starts each image branch; image
            inputs are then its bottom's feature maps ``[b, h, w, c]``, and ``mmd_fc6`` / ``mmd_fc7`` are taken at
            the top's last block and head (the ImageNet-initialised layers), not at fc6/fc7.

    Example:
        >>> model = CHTNModel(config, image_feature_dim=1280, num_classes=10,
        ...                   text_vectorizer=vectorizer, num_source_classes=10)
        >>> model.compile(optimizer=make_optimizer(config.optimizer))
        >>> model.fit(train_batches, epochs=30)
        >>> model.image_encoder(image_features)  # common representation
    """

    def __init__(self, config: ExperimentConfig, *, image_feature_dim: int, num_classes: int,
                 text_vectorizer: keras.layers.TextVectorization, num_source_classes: int = 0,
                 split_backbone=None, **kwargs):
        super().__init__(**kwargs)
        # Configuration.
        self.config = config
        self.split_backbone = split_backbone if config.model.image_top_blocks else None
        if config.model.image_top_blocks and (split_backbone is None
                                              or split_backbone.top_blocks != config.model.image_top_blocks):
            raise ValueError(f"model.image_top_blocks={config.model.image_top_blocks} needs the EfficientNet-Lite "
                             f"backbone split before that many blocks (split_backbone), got {split_backbone!r}")
        # With a trainable backbone top the image inputs are the frozen bottom's feature maps.
        self.image_input_shape = (tuple(self.split_backbone.map_shape) if self.split_backbone
                                  else (int(image_feature_dim),))
        if self.split_backbone:
            image_feature_dim = self.split_backbone.top_dims["features"]
        self.image_feature_dim = int(image_feature_dim)
        self.num_classes = int(num_classes)
        self.use_source = bool(num_source_classes) and config.loss.source_transfer
        self.num_source_classes = int(num_source_classes) if self.use_source else 0
        model_cfg = config.model

        # Layers.
        self.text_vectorizer = text_vectorizer
        vocab_size = int(text_vectorizer.vocabulary_size())
        members = model_cfg.members
        self.image_branch = build_image_branch(self.image_feature_dim, widths=model_cfg.branch_widths, suffix="i",
                                               dropout=model_cfg.dropout, input_bn=model_cfg.image_input_bn,
                                               input_dropout=model_cfg.input_dropout, members=members,
                                               name="image_branch")
        text_input_dropout = (model_cfg.input_dropout if model_cfg.text_input_dropout is None
                              else model_cfg.text_input_dropout)
        self.text_branch = build_text_branch(vocab_size, widths=model_cfg.branch_widths, dropout=model_cfg.dropout,
                                            input_norm=model_cfg.text_input_norm,
                                            input_dropout=text_input_dropout, members=members)
        fc7_width = model_cfg.branch_widths[1]
        head = dict(widths=model_cfg.shared_widths, members=members)
        if model_cfg.shared_layers:
            self.image_head = build_correlation_head(fc7_width, self.num_classes, **head)
            self.text_head = self.image_head
        else:
            self.image_head = build_correlation_head(fc7_width, self.num_classes, **head, name="image_head")
            self.text_head = build_correlation_head(fc7_width, self.num_classes, **head, name="text_head")
        self.image_top = self.source_top = None
        if self.split_backbone:
            self.image_top = _frozen_statistics(self.split_backbone.top(name="image_top", layer_prefix="i_"))
        if self.use_source and self.split_backbone:
            # The source branch is the backbone's own top and ImageNet classifier (ImageNet labels when the
            # source classes are ImageNet classes, else a new classifier on its features).
            self.source_branch = None
            self.source_top = _frozen_statistics(self.split_backbone.top(name="source_top", layer_prefix="s_"))
            self.source_classifier = (self.split_backbone.classifier(name="source_imagenet_logits")
                                      if self.num_source_classes == IMAGENET_CLASSES else
                                      keras.layers.Dense(self.num_source_classes, name="fc8_s"))
        elif self.use_source:
            self.source_branch = build_image_branch(self.image_feature_dim, widths=model_cfg.branch_widths,
                                                    suffix="s", dropout=model_cfg.dropout,
                                                    input_bn=model_cfg.image_input_bn, members=members,
                                                    name="source_branch")
            self.source_classifier = build_source_classifier(fc7_width, self.num_source_classes, members=members)
        else:
            self.source_branch = None
            self.source_classifier = None

        # The text regression mixed into the text gallery codes (fitted by fit_text_regression, then fixed).
        self.gallery_linear_weight = (float(model_cfg.text_gallery_linear_weight)
                                      if model_cfg.representation == "fc10" else 0.0)
        if self.gallery_linear_weight:
            self.text_linear_input = linear.SublinearTfIdf(vocab_size, name="text_linear_tfidf")
            self.text_linear = keras.layers.Dense(self.num_classes, name="text_linear", trainable=False)
            self.text_linear_input.idf.assign(linear.vectorizer_idf(text_vectorizer))

        # Encoders: functional models sharing the layers above, used for evaluation and export.
        self.image_encoder = self._build_image_encoder()
        self.text_encoder, self.text_gallery_encoder = self._build_text_encoders()

        # One tracker per loss term.
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in ("loss",) + LOSS_TERMS}
        # Built under a strategy with several replicas: BatchNorm over the global batch.
        cross_replica.synchronize_batch_norm(self)

    # ------------------------------------------------------------------ encoders
    def _image_features(self, images):
        """What the image branch starts from: the trainable backbone top's pooled features, or the inputs."""
        return images if self.image_top is None else self.image_top(images)["features"]

    def _representation(self, fc9, logits):
        members = self.config.model.members
        if self.config.model.representation == "fc9":
            # Members side by side: [b, members * width].
            return fc9 if members == 1 else keras.layers.Reshape((members * fc9.shape[-1],), name="fc9_members")(fc9)
        probabilities = keras.layers.Softmax(name="fc10_probabilities")(logits)
        if members == 1:
            return probabilities
        return keras.layers.GlobalAveragePooling1D(name="fc10_member_mean")(probabilities)  # mean over members

    def _build_image_encoder(self) -> keras.Model:
        features = keras.Input(shape=self.image_input_shape,
                               name="feature_maps" if self.image_top is not None else "image_features")
        _, fc7 = self.image_branch(self._image_features(features))
        fc9, logits = self.image_head(fc7)
        return keras.Model(features, self._representation(fc9, logits), name="image_encoder")

    def _build_text_encoders(self) -> tuple:
        """The text encoder (query codes) and the text gallery encoder (the codes texts are retrieved by), which
        mixes the text regression's probabilities into the query codes; the same model when there is none."""
        texts = keras.Input(shape=(), dtype="string", name="text")
        bag_of_words = self.text_vectorizer(texts)
        _, fc7 = self.text_branch(bag_of_words)
        fc9, logits = self.text_head(fc7)
        codes = self._representation(fc9, logits)
        encoder = keras.Model(texts, codes, name="text_encoder")
        if not self.gallery_linear_weight:
            return encoder, encoder
        linear_logits = self.text_linear(self.text_linear_input(bag_of_words))
        linear_probabilities = keras.layers.Softmax(name="text_linear_probabilities")(linear_logits)
        weight = self.gallery_linear_weight
        gallery_codes = (1.0 - weight) * codes + weight * linear_probabilities
        return encoder, keras.Model(texts, gallery_codes, name="text_gallery_encoder")

    def fit_text_regression(self, bag_of_words, labels, *, batch_size: int = 1024) -> None:
        """Fits the text gallery codes' logistic regression on the training texts and sets its fixed layers.

        Args:
            bag_of_words: the training texts' vectoriser rows (dense or ``tf.SparseTensor``).
            labels: their class labels.
        """
        if not self.gallery_linear_weight:
            raise ValueError("this model has no text regression to fit (model.text_gallery_linear_weight is 0)")
        import scipy.sparse

        sparse = isinstance(bag_of_words, tf.SparseTensor)
        count, width = (int(d) for d in bag_of_words.shape)
        chunks = []
        for start in range(0, count, batch_size):  # dense a batch at a time: all texts at once may not fit
            chunk = (tf.sparse.to_dense(tf.sparse.slice(bag_of_words, [start, 0], [batch_size, width])) if sparse
                     else np.asarray(bag_of_words[start:start + batch_size], np.float32))
            chunks.append(scipy.sparse.csr_matrix(keras.ops.convert_to_numpy(self.text_linear_input(chunk))))
        rows = scipy.sparse.vstack(chunks).tocsr() if chunks else scipy.sparse.csr_matrix((0, width - 1))
        kernel, bias = linear.fit_logistic_regression(rows, labels, self.num_classes)
        self.text_linear.set_weights([kernel, bias])

    # ------------------------------------------------------------------ forward
    def call(self, inputs, training=False):
        """``{"image": features, "text": strings}`` -> ``{"image": codes, "text": codes}`` (either key optional)."""
        outputs = {}
        if "image" in inputs:
            outputs["image"] = self.image_encoder(inputs["image"], training=training)
        if "text" in inputs:
            outputs["text"] = self.text_encoder(inputs["text"], training=training)
        return outputs

    def build_all(self) -> None:
        """Creates every variable (including the training-only source branch) by one symbolic pass."""
        images = tf.zeros([2, *self.image_input_shape])
        batch = {"target": {"image": images, "text": tf.constant(["a", "b"]), "label": tf.zeros([2], tf.int32)}}
        if self.use_source:
            batch["source"] = {"image": images, "label": tf.zeros([2], tf.int32)}
        self.loss_terms(batch, training=False)
        self.image_encoder(images[:1])
        self.built = True

    def loss_terms(self, batch, training: bool) -> dict:
        """Every term of the hybrid objective for one batch, unweighted, as a dict of scalars."""
        target = batch["target"]
        labels = tf.cast(target["label"], tf.int32)
        target_top = None if self.image_top is None else self.image_top(target["image"], training=training)
        image_fc6, image_fc7 = self.image_branch(target["image"] if target_top is None else target_top["features"],
                                                 training=training)
        text_fc6, text_fc7 = self.text_branch(self._bag_of_words(target), training=training)
        _, image_logits = self.image_head(image_fc7, training=training)
        _, text_logits = self.text_head(text_fc7, training=training)
        zero = tf.constant(0.0)
        smoothing = self.config.loss.label_smoothing
        members = self.config.model.members
        terms = {
            "image_ce": chtn_losses.softmax_cross_entropy(*_member_rows(labels, image_logits, members),
                                                          label_smoothing=smoothing),
            "text_ce": chtn_losses.softmax_cross_entropy(*_member_rows(labels, text_logits, members),
                                                         label_smoothing=smoothing),
            "pair_fc6": chtn_losses.pair_loss(_rows(image_fc6), _rows(text_fc6)),
            "pair_fc7": chtn_losses.pair_loss(_rows(image_fc7), _rows(text_fc7)),
            "source_ce": zero, "mmd_fc6": zero, "mmd_fc7": zero,
        }
        if self.use_source and "source" in batch:
            source = batch["source"]
            source_labels = tf.cast(source["label"], tf.int32)
            kernel = dict(kernel_mul=self.config.loss.mmd_kernel_mul, kernel_num=self.config.loss.mmd_kernel_num)
            if self.source_top is not None:
                # MMD at the trainable ImageNet layers (the last top block's and the head's pooled outputs).
                source_top = self.source_top(source["image"], training=training)
                source_logits = self.source_classifier(source_top["features"], training=training)
                terms["source_ce"] = chtn_losses.softmax_cross_entropy(source_labels, source_logits)
                lower, upper = self.split_backbone.top_outputs[-2:]
                terms["mmd_fc6"] = chtn_losses.gaussian_mmd(source_top[lower], target_top[lower], **kernel)
                terms["mmd_fc7"] = chtn_losses.gaussian_mmd(source_top[upper], target_top[upper], **kernel)
                return terms
            source_fc6, source_fc7 = self.source_branch(source["image"], training=training)
            source_logits = self.source_classifier(source_fc7, training=training)
            terms["source_ce"] = chtn_losses.softmax_cross_entropy(*_member_rows(source_labels, source_logits, members))
            terms["mmd_fc6"] = _member_mean(chtn_losses.gaussian_mmd, source_fc6, image_fc6, members, **kernel)
            terms["mmd_fc7"] = _member_mean(chtn_losses.gaussian_mmd, source_fc7, image_fc7, members, **kernel)
        return terms

    def _bag_of_words(self, target: dict):
        if "bag_of_words" not in target:
            return self.text_vectorizer(target["text"])
        # Dense from here: TensorFlow's sparse-dense matmul (and its gradient) is slower on CPU than the dense
        # one at a few percent non-zeros (benchmarks/RESULTS.md, "Speed").
        return keras.ops.convert_to_tensor(target["bag_of_words"], sparse=False)

    def total_loss(self, terms: dict):
        """The weighted sum of the objective, in one place (see :class:`~chtn_tf.model.config.LossConfig`)."""
        w = self.config.loss
        return (w.source_ce * terms["source_ce"] + w.image_ce * terms["image_ce"] + w.text_ce * terms["text_ce"]
                + w.mmd * (terms["mmd_fc6"] + terms["mmd_fc7"])
                + w.pair * (terms["pair_fc6"] + terms["pair_fc7"]))

    # ------------------------------------------------------------------ training
    def train_step(self, batch):
        """One optimiser step on ``batch``; under a strategy, on this replica's slice of the global batch.

        Each replica minimises its share of the global objective (per-example terms as a mean over the
        global batch, MMD as the mean of the replicas' estimates; see :mod:`chtn_tf.model.cross_replica`)
        and the optimiser sums the replicas' gradients. With one replica this is the plain objective.
        """
        with tf.GradientTape() as tape:
            terms = cross_replica.replica_shares(self.loss_terms(batch, training=True), batch)
            loss = self.total_loss(terms)
        gradients = tape.gradient(loss, self.trainable_variables)
        self._apply_gradients(gradients)
        return self._track(*cross_replica.global_values(loss, terms))

    def _apply_gradients(self, gradients) -> None:
        """``optimizer.apply``, compiled by XLA in a single-replica run.

        The update is a dozen element-wise passes over every weight (AdamW: moments, decay, EMA); XLA fuses
        them, which makes the step about a third faster (benchmarks/RESULTS.md, "Speed"). Under a
        ``tf.distribute`` strategy the optimiser all-reduces the gradients itself, which XLA cannot compile.
        """
        if tf.distribute.has_strategy():
            self.optimizer.apply(gradients, self.trainable_variables)
        else:
            self._apply_gradients_xla(gradients)

    @tf.function(jit_compile=True)
    def _apply_gradients_xla(self, gradients):
        self.optimizer.apply(gradients, self.trainable_variables)

    def test_step(self, batch):
        terms = cross_replica.replica_shares(self.loss_terms(batch, training=False), batch)
        return self._track(*cross_replica.global_values(self.total_loss(terms), terms))

    def _track(self, loss, terms):
        self.loss_trackers["loss"].update_state(loss)
        for name in LOSS_TERMS:
            self.loss_trackers[name].update_state(terms[name])
        return {name: tracker.result() for name, tracker in self.loss_trackers.items()}

    @property
    def metrics(self):
        return list(self.loss_trackers.values())

    # ------------------------------------------------------------------ inference helpers
    def encode_images(self, features, batch_size: int = 512) -> np.ndarray:
        """Common representation of image feature vectors, as numpy."""
        features = np.asarray(features, dtype=np.float32)
        return np.concatenate([
            keras.ops.convert_to_numpy(self._encode_images_fn(tf.constant(features[i:i + batch_size])))
            for i in range(0, len(features), batch_size)
        ]) if len(features) else np.zeros((0, self.code_dim), np.float32)

    def encode_texts(self, texts, batch_size: int = 512) -> np.ndarray:
        """Common representation of raw texts as queries (text->image), as numpy."""
        return self._encode_strings(self._encode_texts_fn, texts, batch_size)

    def encode_text_gallery(self, texts, batch_size: int = 512) -> np.ndarray:
        """Common representation of raw texts as retrieved items (image->text), as numpy: the query codes
        unless the model mixes a text regression into them (``model.text_gallery_linear_weight``)."""
        if self.text_gallery_encoder is self.text_encoder:
            return self.encode_texts(texts, batch_size)
        return self._encode_strings(self._encode_text_gallery_fn, texts, batch_size)

    def _encode_strings(self, function, texts, batch_size: int) -> np.ndarray:
        texts = list(texts)
        return np.concatenate([
            keras.ops.convert_to_numpy(function(tf.constant(texts[i:i + batch_size], dtype=tf.string)))
            for i in range(0, len(texts), batch_size)
        ]) if texts else np.zeros((0, self.code_dim), np.float32)

    @property
    def code_dim(self) -> int:
        if self.config.model.representation == "fc10":
            return self.num_classes
        return self.config.model.shared_widths[1] * self.config.model.members

    @tf.function(reduce_retracing=True)
    def _encode_images_fn(self, features):
        return self.image_encoder(features, training=False)

    @tf.function(reduce_retracing=True)
    def _encode_texts_fn(self, texts):
        return self.text_encoder(texts, training=False)

    @tf.function(reduce_retracing=True)
    def _encode_text_gallery_fn(self, texts):
        return self.text_gallery_encoder(texts, training=False)


def _frozen_statistics(top: keras.Model) -> keras.Model:
    """``top`` with its BatchNorm layers frozen: they keep ImageNet's statistics (batches of a few dozen images of
    one collection would replace them with noisy ones), and their scale and offset stay ImageNet's."""
    for layer in top.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return top


def _rows(x):
    """``[b, members, d]`` -> ``[b * members, d]`` (each member's row of a pair is a row); ``[b, d]`` unchanged.
    A term that averages over rows then averages over the members too."""
    return x if len(x.shape) == 2 else tf.reshape(x, [-1, x.shape[-1]])


def _member_rows(labels, logits, members: int) -> tuple:
    """Labels and logits with the members as rows (see :func:`_rows`): the cross-entropy is the members' mean."""
    return (labels, logits) if members == 1 else (tf.repeat(labels, members), _rows(logits))


def _member_mean(term, source, target, members: int, **kwargs):
    """A batch-statistic term (MMD) computed per member and averaged: each member has its own feature space."""
    if members == 1:
        return term(source, target, **kwargs)
    return tf.add_n([term(source[:, k], target[:, k], **kwargs) for k in range(members)]) / members


def make_optimizer(config, *, total_steps: int = 0) -> keras.optimizers.Optimizer:
    """The optimiser of an :class:`~chtn_tf.model.config.OptimizerConfig`; no decay on biases and BatchNorm.

    Args:
        config: the optimiser section of the run's config.
        total_steps: optimiser steps the run will take (epochs x batches per epoch); the ``cosine`` schedule
            decays the learning rate to 0 over them. Ignored by the ``constant`` schedule.
    """
    learning_rate = config.learning_rate
    ema = dict(use_ema=True, ema_momentum=config.ema_momentum) if config.ema_momentum else {}
    if config.schedule == "cosine" and total_steps > 0:
        learning_rate = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=int(total_steps))
    if config.name == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate=learning_rate, momentum=config.momentum,
                                         weight_decay=config.weight_decay or None, **ema)
    elif config.name == "adam":
        optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=config.weight_decay, **ema)
    else:
        raise ValueError(f"optimizer.name must be 'sgd' or 'adam', got {config.name!r}")
    if config.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=["bias", "beta", "gamma"])
    return optimizer
