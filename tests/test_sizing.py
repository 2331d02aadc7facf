"""Network size chosen from the data: the rules by hand, the new-collection defaults, a resolved config is kept."""

import pytest

from chtn_tf.model.config import ExperimentConfig, dataset_config
from chtn_tf.model.sizing import fill_from, has_auto_size, members_for, size_to_data, width_for


@pytest.mark.parametrize("pairs, width", [(1, 128), (246, 128), (362, 128), (363, 256), (724, 256), (725, 512),
                                          (1448, 512), (1449, 512), (2400, 512), (10 ** 6, 512)])
def test_width_is_half_the_training_pairs_as_a_power_of_two_within_bounds(pairs, width):
    # n / 2 on the log scale: 363 / 2 = 181.5 > 2 ** 7.5 = 181.02, so it rounds up to 256.
    assert width_for(pairs) == width


def test_a_manifest_gets_the_new_collection_defaults_and_a_dataset_its_own():
    manifest = dataset_config(None)
    assert has_auto_size(manifest)
    assert (manifest.optimizer.name, manifest.optimizer.schedule, manifest.train.batch_size) == ("adam", "cosine", 32)
    assert manifest.model.text_input_norm == "l2" and manifest.model.dropout == 0.5
    assert not has_auto_size(dataset_config("webnews"))
    webnews = dataset_config("webnews").model
    assert (webnews.branch_widths, webnews.shared_widths, webnews.members) == ((512, 512), (512, 512), 3)
    assert ExperimentConfig().model.branch_widths == (4096, 4096)  # the released model's values stay the base


@pytest.mark.parametrize("width, members", [(64, 5), (128, 5), (256, 5), (320, 4), (512, 3), (1024, 1)])
def test_members_keep_about_1536_units_a_layer_and_at_most_five(width, members):
    assert members_for(width) == members


def test_size_to_data_fills_only_the_zeros_and_is_idempotent():
    config = dataset_config(None).override({"model.shared_widths": (0, 64)})
    sized = size_to_data(config, 300)
    assert sized.model.branch_widths == (128, 128) and sized.model.shared_widths == (128, 64)
    assert sized.model.members == 5
    assert size_to_data(sized, 5000).to_dict() == sized.to_dict()  # resolved: the data no longer matters
    assert config.model.branch_widths == (0, 0) and config.model.members == 0  # the given config is not changed
    assert size_to_data(dataset_config(None), 1000).model.members == 3  # 512 wide
    given = dataset_config(None).override({"model.members": 3})
    assert size_to_data(given, 300).model.members == 3  # a member count given is kept
    assert fill_from(config, sized).to_dict() == sized.to_dict()  # a resumed run takes the sizes it chose


@pytest.mark.parametrize("field, value, words", [
    ("model.branch_widths", (-1, 8), "positive"), ("model.text_input_norm", "layer", "text_input_norm"),
    ("optimizer.schedule", "step", "optimizer.schedule"), ("optimizer.name", "rmsprop", "optimizer.name"),
    ("model.input_dropout", 1.0, "below 1.0"), ("optimizer.ema_momentum", -0.1, "at least 0.0")])
def test_bad_values_of_the_new_fields_are_refused_with_the_field_named(field, value, words):
    with pytest.raises(ValueError, match=words):
        ExperimentConfig().override({field: value})
