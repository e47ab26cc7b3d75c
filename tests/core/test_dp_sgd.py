"""DP-SGD: per-example clipping against a float64 loop, Poisson sampling, noise, and fit."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import LABELS
from conftest import reference_dp_epsilon
from conftest import TEXTS
from conftest import token_batch

import keras_adapters as ka
from keras_adapters.core import dp_sgd
from keras_adapters.methods import per_example
from keras_adapters.core import privacy
from keras_adapters.core.privacy import DPConfig
from keras_adapters.core.privacy import PrivacyBudgetError
from keras_adapters.core.privacy import spent_epsilon


def private_model(preset, method="lora", length=16, **kwargs):
    model = ka.AdapterModel.from_preset(preset, num_classes=4, method=method, sequence_length=length, **kwargs)
    model.compile(privacy=DPConfig(noise_multiplier=1.0, delta=1e-3))
    return model


norms = []  # each example's gradient norm in the last `reference_sum`


def reference_sum(model, x, y, clip_norm):
    """Each example alone (a batch of one, padding kept), its gradient's norm,
    clipping and the sum in float64."""
    variables = model.trainable_variables
    total = [np.zeros(v.shape, np.float64) for v in variables]
    norms.clear()
    for i in range(len(y)):
        xi = {k: v[i : i + 1] for k, v in x.items()}
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x=xi, y=y[i : i + 1], y_pred=model(xi, training=False))
        grads = [np.zeros(v.shape) if g is None else tf.convert_to_tensor(g).numpy().astype(np.float64)
                 for g, v in zip(tape.gradient(loss, variables), variables)]
        norm = np.sqrt(sum((g**2).sum() for g in grads))
        scale = 1.0 if clip_norm is None else min(1.0, clip_norm / norm)
        total = [t + scale * g for t, g in zip(total, grads)]
        norms.append(norm)
    return total


def prepared(model, x, y):
    plan = model.privacy.plan(len(y) * 4, 2, 1)
    dp_sgd.prepare(model, plan, (x, y), ka.tasks.get_task(model.task))
    return model


def batch_of(model, texts):
    x = model.preprocessor(tf.constant(texts))
    x = x[0] if isinstance(x, tuple) else x
    return {k: np.asarray(v) for k, v in x.items()}


def clipped_sum(how, model, x, y, clip_norm):
    if how in ("batched", "chunks of 3"):
        assert model.dp_state.batched  # the model's weights all sit in maps per_example computes
        chunk = 3 if how == "chunks of 3" else None  # (sorted by length: outputs must come back in order)
        return dp_sgd.batched_clipped_gradient_sum(model, x, y, clip_norm, chunk=chunk)
    return dp_sgd.clipped_gradient_sum(model, x, y, None, clip_norm)


@pytest.mark.parametrize(
    "how,method,clipping",
    [("loop", "lora", "none"), ("loop", "lora", "all"), ("loop", "lora", "half"),
     ("batched", "lora", "half"), ("batched", "houlsby", "none"), ("batched", "pfeiffer", "all"),
     ("chunks of 3", "houlsby", "half")],
)
def test_clipped_sum_equals_a_float64_loop_over_single_examples(tiny_preset, how, method, clipping):
    model = private_model(tiny_preset, method=method)
    from conftest import randomize_adapter_weights

    randomize_adapter_weights(model.backbone, scale=0.05)  # (zero-initialised up-projections hide the rest)
    x, y = {k: np.array(v) for k, v in batch_of(model, TEXTS).items()}, LABELS
    x["padding_mask"][2, 5:] = False  # rows of other lengths: the batched pass keeps their padding
    x["token_ids"][2, 5:] = 0
    x["padding_mask"][6, 3:] = False
    x["token_ids"][6, 3:] = 0
    prepared(model, x, y)
    reference_sum(model, x, y, None)
    # clip every example, or half of them (between the 4th and 5th norms), or none
    clip_norm = {"none": None, "all": 1e-3, "half": float(np.mean(sorted(norms)[3:5]))}[clipping]
    sums, loss_sum, predictions = clipped_sum(how, model, x, y, clip_norm)
    reference = reference_sum(model, x, y, clip_norm)
    scale = max(np.abs(w).max() for w in reference)  # float32 sums of 8 cancel to ~1e-6 of it
    for got, want in zip(sums, reference):
        np.testing.assert_allclose(got.numpy(), want, rtol=2e-4, atol=1e-5 * scale)
    if clipping == "half":
        assert sum(n > clip_norm for n in norms) == 4 and norms[0] != norms[1]
    if clipping == "all":  # every example is clipped: the sum's norm is at most 8 * C
        assert np.sqrt(sum((s.numpy() ** 2).sum() for s in sums)) <= 8 * clip_norm * 1.0001
    np.testing.assert_allclose(predictions.numpy(), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_without_clipping_or_noise_the_sum_is_the_batch_gradient(tiny_preset):
    model = private_model(tiny_preset, method="houlsby")
    x, y = batch_of(model, TEXTS), LABELS
    prepared(model, x, y)
    sums, _, _ = dp_sgd.clipped_gradient_sum(model, x, y, None, None)
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=False))  # the batch's mean loss
    batch = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, model.trainable_variables)]
    scale = max(np.abs(w).max() for w in batch)
    for got, want in zip(sums, batch):
        np.testing.assert_allclose(got.numpy() / len(y), want, rtol=2e-4, atol=1e-5 * scale)


def test_trimming_padding_changes_no_example_output(tiny_preset):
    model = private_model(tiny_preset)
    x = token_batch(batch=3, length=16)
    x["padding_mask"][1, 9:] = False
    full = model(x, training=False).numpy()
    for i in range(3):
        one = dp_sgd.trim_padding({k: tf.constant(v[i : i + 1]) for k, v in x.items()})
        assert one["token_ids"].shape[1] == int(x["padding_mask"][i].nonzero()[0].max()) + 1
        np.testing.assert_allclose(model(one, training=False).numpy()[0], full[i], rtol=1e-5, atol=1e-6)


def test_poisson_batches_have_the_sizes_and_shares_the_sampling_rate_gives():
    count, rate, steps = 400, 0.05, 300
    examples = (np.arange(count, dtype=np.int32), np.zeros(count, np.int32))
    batches = dp_sgd.poisson_batches(examples, rate, steps)
    sizes, seen = [], np.zeros(count)
    for epoch in range(2):
        drawn = [b[0].numpy() for b in batches]
        assert len(drawn) == steps
        sizes += [len(d) for d in drawn]
        for d in drawn:
            seen[d] += 1
        if epoch == 0:
            first = drawn
    assert any(not np.array_equal(a, b) for a, b in zip(first, drawn))  # the next epoch draws anew
    mean, expected = np.mean(sizes), count * rate
    standard_error = np.sqrt(count * rate * (1 - rate) / len(sizes))
    assert abs(mean - expected) < 4 * standard_error  # 20 +- 0.36
    assert np.var(sizes) == pytest.approx(count * rate * (1 - rate), rel=0.25)  # binomial, not fixed
    assert abs(seen.mean() / (2 * steps) - rate) < 0.005 and seen.min() > 5  # every example is drawn


def test_poisson_batches_start_no_autotuning_thread():
    # With tf.data autotuning on, `fit` deleting an epoch's iterator sometimes
    # waits out the tuning thread's sleep (31-35 s with no CPU on BBC News).
    batches = dp_sgd.poisson_batches((np.arange(10, dtype=np.int32),), 0.5, 3)
    assert batches.options().autotune.enabled is False
    assert len(list(batches)) == 3


def test_noise_has_the_planned_deviation_over_the_expected_batch(tiny_preset):
    plan = DPConfig(noise_multiplier=1.3, clip_norm=0.7, delta=1e-4).plan(1000, 50, 1)
    noised = dp_sgd.noised_mean([tf.zeros([200, 100])], plan, dp_sgd.secret_generator())[0].numpy()
    assert abs(noised.mean()) < 4 * (1.3 * 0.7 / 50) / np.sqrt(noised.size)
    assert noised.std() == pytest.approx(1.3 * 0.7 / 50, rel=0.02)


@pytest.mark.slow  # the default run's budget (15 min on 2 cores): CI runs it with the slow tests
def test_private_fit_reports_epsilon_per_epoch_and_keeps_it_with_the_adapter(tiny_preset, tmp_path):
    keras.utils.set_random_seed(0)
    model = ka.AdapterModel.from_preset(tiny_preset, num_classes=4, method="lora", sequence_length=16)
    model.compile(privacy=DPConfig(epsilon=4.0, delta=1e-3))
    texts, labels = TEXTS * 8, np.tile(LABELS, 8)
    before = [w.numpy().copy() for w in model.trainable_variables]
    history = model.fit(texts, labels, batch_size=8, epochs=3, verbose=0).history
    report = model.privacy_report()
    assert int(model.optimizer.iterations.numpy()) == report["steps"] == 24
    expected = [spent_epsilon(report["noise_multiplier"], 0.125, 8 * e, 1e-3) for e in (1, 2, 3)]
    np.testing.assert_allclose(history["epsilon"], expected, rtol=1e-9)
    assert history["epsilon"][-1] <= 4.0 and history["epsilon"][-1] == pytest.approx(4.0, rel=0.01)
    assert any(not np.allclose(b, w.numpy()) for b, w in zip(before, model.trainable_variables))
    model.save_adapter(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["privacy"]
    assert saved == report
    other = ka.AdapterModel.from_adapter(tmp_path / "adapter", preset=tiny_preset)
    assert other.privacy_report() == report
    model.compile()  # trained on without privacy: the guarantee no longer holds
    model.fit(texts, labels, batch_size=8, epochs=1, verbose=0)
    assert model.privacy_report() is None


def test_given_noise_and_budget_stop_training_at_the_budget(tiny_preset):
    model = ka.AdapterModel.from_preset(tiny_preset, num_classes=4, method="lora", sequence_length=16)
    model.compile(privacy=DPConfig(epsilon=3.0, noise_multiplier=1.5, delta=1e-3))
    history = model.fit(TEXTS * 8, np.tile(LABELS, 8), batch_size=8, epochs=20, verbose=0).history
    steps = int(model.optimizer.iterations.numpy())
    assert 8 < steps < 160  # stopped part-way, after the first epoch
    assert spent_epsilon(1.5, 0.125, steps, 1e-3) <= 3.0 < spent_epsilon(1.5, 0.125, steps + 1, 1e-3)
    assert len(history["epsilon"]) < 20 and history["epsilon"][-1] <= 3.0


def test_a_tagger_trains_privately_on_padded_examples(tiny_preset):
    model = ka.AdapterModel.from_preset(
        tiny_preset, num_classes=3, method="lora", sequence_length=16, task="token_classification",
        class_names=["O", "B-ORG", "I-ORG"],
    )
    model.compile(privacy=DPConfig(noise_multiplier=0.5, delta=1e-3))
    x = token_batch(batch=16, length=16)
    y = np.where(x["padding_mask"], np.arange(16)[None, :] % 3, -1).astype("int32")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert model.dp_state is None and model.privacy_report()["unit"] == "sentence"
    assert int(model.optimizer.iterations.numpy()) == 4


def test_what_breaks_private_training_is_refused(tiny_preset):
    model = private_model(tiny_preset)
    with pytest.raises(ValueError, match="validation_split holds out examples of the private data"):
        model.fit(TEXTS, LABELS, validation_split=0.25, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="float16 loss scaling"):
        model.compile(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD()),
                      privacy=DPConfig(epsilon=1.0))
    with pytest.raises(TypeError, match="privacy must be a ka.DPConfig"):
        model.compile(privacy=8.0)


@pytest.mark.checkpoint
def test_minilm_clipping_equals_the_float64_loop(minilm_preset):
    model = ka.AdapterModel.from_preset(minilm_preset, num_classes=4, method="lora", sequence_length=48)
    model.compile(privacy=DPConfig(noise_multiplier=1.0, delta=1e-3))
    from conftest import randomize_adapter_weights

    randomize_adapter_weights(model.backbone, scale=0.05)
    texts = ["The team won the cup final in extra time.", "Shares fell sharply.",
             "A new phone was released today with a faster chip and a brighter screen.", "Vote!"]
    x, y = batch_of(model, texts), np.array([0, 1, 2, 3])
    prepared(model, x, y)
    reference = reference_sum(model, x, y, 0.5)
    scale = max(np.abs(w).max() for w in reference)
    for how in ("loop", "batched"):
        sums, _, _ = clipped_sum(how, model, x, y, 0.5)
        for got, want in zip(sums, reference):
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-3, atol=1e-5 * scale)


@pytest.mark.slow  # ~30 s: keeps the default run under 15 minutes (CI runs it with -m slow)
@pytest.mark.parametrize("how", ["loop", "batched"])
def test_an_empty_poisson_batch_is_a_noise_only_step(tiny_preset, how):
    model = private_model(tiny_preset)
    x, y = batch_of(model, TEXTS), LABELS
    prepared(model, x, y)
    empty = ({k: v[:0] for k, v in x.items()}, y[:0])
    sums, loss_sum, predictions = clipped_sum(how, model, *empty, 1.0)
    assert predictions.shape == (0, 4) and float(loss_sum) == 0.0
    assert all(not s.numpy().any() for s in sums)
    before = [w.numpy().copy() for w in model.trainable_variables]
    model.train_on_batch(*empty)  # the noise still moves the weights
    assert all(not np.allclose(b, w.numpy()) for b, w in zip(before, model.trainable_variables))


def test_a_private_model_trains_only_through_fit_one_step_per_batch(tiny_preset):
    model = ka.AdapterModel.from_preset(tiny_preset, num_classes=4, method="lora", sequence_length=16)
    model.compile(privacy=DPConfig(noise_multiplier=1.0, delta=1e-3))
    with pytest.raises(ValueError, match="train_on_batch and custom loops would train without privacy"):
        model.train_on_batch(batch_of(model, TEXTS), LABELS)
    other = ka.AdapterModel.from_preset(tiny_preset, num_classes=4, method="lora", sequence_length=16)
    other.compile(privacy=DPConfig(noise_multiplier=1.0, delta=1e-3), steps_per_execution=2)
    with pytest.raises(ValueError, match="without steps_per_execution"):
        other.fit(TEXTS * 4, np.tile(LABELS, 4), batch_size=8, epochs=1, verbose=0)


@pytest.mark.slow  # ~25 s (three private fits); the accounting itself is tested fast in test_privacy.py
def test_later_private_fits_are_composed_with_the_adapters_earlier_ones(tiny_preset, tmp_path):
    texts, labels = TEXTS * 4, np.tile(LABELS, 4)
    model = ka.AdapterModel.from_preset(tiny_preset, num_classes=4, method="lora", sequence_length=16)
    model.compile(privacy=DPConfig(noise_multiplier=1.0, delta=1e-3))
    model.fit(texts, labels, batch_size=8, epochs=1, verbose=0)  # 4 steps of 32 examples
    first = model.privacy_report()
    model.fit(texts, labels, batch_size=8, epochs=2, verbose=0)  # 8 more, counted from where the optimizer was
    second = model.privacy_report()
    assert (first["steps"], second["steps"]) == (4, 8)
    assert second["previous_fits"] == [{k: first[k] for k in privacy.FIT_FIELDS}]
    # two fits of the same noise and rate compose to one fit of all their steps
    assert second["epsilon"] == pytest.approx(spent_epsilon(1.0, 0.25, 12, 1e-3), rel=1e-9)
    model.save_adapter(tmp_path / "adapter")
    again = ka.AdapterModel.from_adapter(tmp_path / "adapter", preset=tiny_preset)
    total = second["epsilon"] + 1.0
    again.compile(privacy=DPConfig(epsilon=total, delta=1e-3))  # the adapter's whole budget
    again.fit(texts, labels, batch_size=8, epochs=1, verbose=0)
    third = again.privacy_report()
    assert len(third["previous_fits"]) == 2 and third["target_epsilon"] == total
    want = reference_dp_epsilon([(1.0, 0.25, 4), (1.0, 0.25, 8), (third["noise_multiplier"], 0.25, 4)], 1e-3)
    assert third["epsilon"] == pytest.approx(want, rel=1e-9)
    assert third["epsilon"] <= total and third["epsilon"] == pytest.approx(total, rel=0.01)
    # the budget is spent: a further fit is refused before it changes anything
    before = [w.numpy().copy() for w in again.trainable_variables]
    with pytest.raises(PrivacyBudgetError, match="earlier private fit"):
        again.fit(texts, labels, batch_size=8, epochs=1, verbose=0)
    assert all(np.array_equal(b, w.numpy()) for b, w in zip(before, again.trainable_variables))
    assert again.privacy_report() == third


def test_a_fit_stopped_by_an_error_still_counts_the_steps_it_took(tiny_preset):
    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                raise KeyboardInterrupt

    model = private_model(tiny_preset)
    with pytest.raises(KeyboardInterrupt):
        model.fit(TEXTS * 4, np.tile(LABELS, 4), batch_size=8, epochs=1, verbose=0, callbacks=[Stop()])
    assert int(model.optimizer.iterations.numpy()) == 3 == model.privacy_report()["steps"]
    assert model.privacy_report()["epsilon"] == pytest.approx(spent_epsilon(1.0, 0.25, 3, 1e-3), rel=1e-9)


@pytest.mark.slow  # ~20 s
def test_earlier_private_fits_count_until_the_adapter_is_deleted(tiny_preset):
    texts, labels = TEXTS * 4, np.tile(LABELS, 4)
    model = ka.AdapterModel.from_preset(tiny_preset, num_classes=4, method="lora", sequence_length=16)
    earlier = DPConfig(epsilon=3.0, delta=1e-3).plan(32, 8, 10)
    model.set_privacy_report("default", earlier.report(earlier.planned_steps))  # as load_adapter does
    model.compile(privacy=DPConfig(epsilon=2.0, delta=1e-3))
    before = [w.numpy().copy() for w in model.trainable_variables]
    spent = r"1 earlier private fit\(s\) already spent epsilon 3 .*leaves nothing of epsilon 2"
    with pytest.raises(PrivacyBudgetError, match=spent):
        model.fit(texts, labels, batch_size=8, epochs=1, verbose=0)
    assert all(np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_variables))
    model.compile()
    model.train_on_batch(batch_of(model, TEXTS), LABELS)  # without privacy: the guarantee is void ...
    assert model.privacy_report() is None
    model.compile(privacy=DPConfig(epsilon=2.0, delta=1e-3))
    with pytest.raises(PrivacyBudgetError, match="leaves nothing"):  # ... but what the private fits spent stays
        model.fit(texts, labels, batch_size=8, epochs=1, verbose=0)
    model.delete_adapter("default")  # a new adapter of the same name owes nothing
    model.add_adapter("default", method="lora", num_classes=4)
    model.train_adapter("default")
    model.compile(privacy=DPConfig(epsilon=2.0, delta=1e-3))
    model.fit(texts, labels, batch_size=8, epochs=1, verbose=0)
    assert "previous_fits" not in model.privacy_report() and model.privacy_report()["epsilon"] <= 2.0


def test_float16_loss_scaling_is_refused_however_it_comes(tiny_preset):
    model = ka.AdapterModel.from_preset(
        tiny_preset, num_classes=4, method="lora", sequence_length=16, dtype="mixed_float16"
    )
    with pytest.raises(ValueError, match="float16 loss scaling"):
        model.compile(privacy=DPConfig(epsilon=1.0))


@pytest.mark.parametrize(
    "method,batched",
    [("lora", True), ("houlsby", True), ("parallel", True), ("ia3", False), ("prompt", False),
     (ka.LoRAConfig(use_dora=True), False)],
)
def test_the_batched_pass_is_used_exactly_where_it_covers_every_trained_weight(tiny_preset, method, batched):
    model = private_model(tiny_preset, method=method)
    x, y = batch_of(model, TEXTS), LABELS
    assert prepared(model, x, y).dp_state.batched is batched
    if not batched:
        return
    # the per-example gradients it finds add up to the batch's gradient, weight by weight
    variables = model.trainable_variables
    with per_example.recording() as notes, tf.GradientTape(persistent=True) as tape:
        loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=False)) * len(y)
    each = notes.gradients(tape, loss, variables, len(y))
    for g, v, total in zip(each, variables, tape.gradient(loss, variables)):
        assert g.shape == (len(y), *v.shape)
        np.testing.assert_allclose(g.numpy().sum(0), tf.convert_to_tensor(total).numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # the fast suite must stay under 15 min
@pytest.mark.checkpoint
def test_in_bfloat16_the_batched_sum_is_as_close_to_float32_as_the_loop(minilm_preset):
    """bf16 rounding moves both; against the same weights in float32 the
    batched pass (its per-example products summed in float32) is no worse."""
    texts = ["The team won the cup final in extra time.", "Shares fell sharply.",
             "A new phone was released today with a faster chip and a brighter screen.", "Vote!"]
    sums = {}
    for dtype in ("float32", "mixed_bfloat16"):
        keras.utils.set_random_seed(0)
        model = private_model(minilm_preset, method="houlsby", length=32, dtype=dtype)
        x, y = batch_of(model, texts), np.array([0, 1, 2, 3])
        prepared(model, x, y)
        for how in ("loop", "batched"):
            sums[dtype, how] = [s.numpy() for s in clipped_sum(how, model, x, y, 0.5)[0]]
    truth = sums["float32", "loop"]

    def error(got):
        return np.sqrt(sum(((g - t) ** 2).sum() for g, t in zip(got, truth)) / sum((t**2).sum() for t in truth))

    assert error(sums["float32", "batched"]) < 1e-4
    assert error(sums["mixed_bfloat16", "batched"]) <= 1.5 * error(sums["mixed_bfloat16", "loop"]) < 0.1
