"""A model whose weights hold NaN gives NaN logits: no protocol may read an answer from them
(argmax over NaN picks an arbitrary token, and the trial would score as a model that knows nothing)."""

import pytest
import torch

from evomerge.evaluate.scorer import Scorer


@pytest.mark.parametrize("protocol", ["paper", "loglik"])
def test_non_finite_logits_fail_the_score_with_that_reason(protocol, fresh_model, bench, char_tokenizer):
    model = fresh_model
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    scorer = Scorer.load(bench, char_tokenizer, protocol=protocol, batch_size=8, chat=False)
    with pytest.raises(FloatingPointError, match="logits are not finite"):
        scorer.score(model, 0.25)


def test_finite_weights_score_as_before(fresh_model, bench, char_tokenizer):
    result = Scorer.load(bench, char_tokenizer, protocol="loglik", batch_size=8, chat=False).score(fresh_model, 0.25)
    assert result.n == 10 and 0.0 <= result.accuracy <= 1.0
