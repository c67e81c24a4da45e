"""The default NER (MiniLM CoNLL head): decoding logic without a model, then the built model's behaviour on
the cases the spaCy default got wrong (clubs named after cities, headlines in capitals)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from models.conll import Sentence, parse, score_spans, tag_spans
from models.enrichment import TextEnricher, load_enricher, shares_encoder
from models.ner import SPACY_NER, load_ner
from models.ner_training import head_layers, ner_encoder_layers, new_head_dir
from models.sentiment import TransformerSentiment
from models.sentiment_training import encoder_path, ensure_default_models, load_encoder, new_model
from models.token_ner import (
    TAGS,
    MiniLMNER,
    TaggerHead,
    decode_entities,
    shape_features,
    subword_labels,
    viterbi,
    word_spans,
)


def test_tag_spans_read_iob1_and_iob2() -> None:
    assert tag_spans(["B-PER", "I-PER", "O", "B-LOC"]) == [(0, 2, "PER"), (3, 4, "LOC")]
    assert tag_spans(["I-ORG", "I-ORG", "B-ORG", "O"]) == [(0, 2, "ORG"), (2, 3, "ORG")]  # IOB1
    assert tag_spans(["O", "I-PER", "I-LOC"]) == [(1, 2, "PER"), (2, 3, "LOC")]


def test_parse_gives_text_and_character_spans() -> None:
    sentences = parse("-DOCSTART- -X- -X- O\n\nLeeds NNP B-NP I-ORG\nbeat VB B-VP O\nU.S. NNP B-NP I-LOC\n\n")
    assert [s.text for s in sentences] == ["Leeds beat U.S."]
    assert sentences[0].spans() == {(0, 5, "ORG"), (11, 15, "LOC")}


def test_score_spans_is_exact_match_micro_and_per_type() -> None:
    gold = [{(0, 5, "ORG"), (11, 15, "LOC")}]
    scores = score_spans(gold, [{(0, 5, "LOC"), (11, 15, "LOC")}])
    assert scores["f1"] == 0.5 and scores["LOC_f1"] == pytest.approx(0.6667, abs=1e-4) and scores["ORG_f1"] == 0.0


def test_viterbi_never_opens_with_or_jumps_into_an_inside_tag() -> None:
    lp = np.log(np.full((3, len(TAGS)), 0.01))
    lp[0, TAGS.index("I-PER")] = 0.0  # the best single tag would be invalid
    lp[1, TAGS.index("I-ORG")] = 0.0
    lp[2, TAGS.index("I-ORG")] = 0.0
    path = [TAGS[i] for i in viterbi(lp)]
    assert not path[0].startswith("I-")
    assert all(not b.startswith("I-") or a[2:] == b[2:] for a, b in itertools.pairwise(path))


def test_viterbi_is_the_best_valid_path_whether_or_not_the_greedy_one_is_valid() -> None:
    """Against every path of short sequences: the greedy shortcut must not change the answer."""
    rng = np.random.default_rng(0)
    valid = {p for p in itertools.product(range(len(TAGS)), repeat=3)
             if not TAGS[p[0]].startswith("I-")
             and all(not TAGS[b].startswith("I-") or TAGS[a][2:] == TAGS[b][2:] for a, b in itertools.pairwise(p))}
    greedy_valid = 0
    for _ in range(300):
        lp = np.log(rng.dirichlet(np.full(len(TAGS), 0.3), size=3))
        best = max(valid, key=lambda p: sum(lp[i, t] for i, t in enumerate(p)))
        greedy_valid += tuple(lp.argmax(1)) in valid
        assert tuple(viterbi(lp)) == best
    assert 30 < greedy_valid < 270  # both branches were exercised


@pytest.fixture(scope="module")
def tokenizer() -> AutoTokenizer:
    return AutoTokenizer.from_pretrained(str(encoder_path()))


def test_subword_labels_continue_inside_a_token_and_decode_back_to_its_span(tokenizer: AutoTokenizer) -> None:
    sentence = Sentence(("Leeds", "beat", "U.S.", "Steel"), ("B-ORG", "O", "B-ORG", "I-ORG"))
    enc = tokenizer([sentence.text], return_offsets_mapping=True)
    word_ids, offsets = enc.word_ids(0), enc["offset_mapping"][0]
    labels = subword_labels(sentence, offsets, [w is None for w in word_ids])
    tags = [TAGS[x] if x >= 0 else None for x in labels]
    assert tags[0] is None and tags[-1] is None  # [CLS], [SEP]
    assert tags[1] == "B-ORG" and tags[3] == "B-ORG" and set(tags[4:-2]) == {"I-ORG"}
    # a model that predicts exactly these targets yields the gold character spans
    lp = np.full((len(tags), len(TAGS)), -20.0)
    for i, tag in enumerate(tags):
        lp[i, TAGS.index(tag or "O")] = 0.0
    ents = decode_entities(sentence.text, lp, word_ids, offsets)
    assert {(e.start, e.end, e.label) for e in ents} == sentence.spans()
    assert [e.text for e in ents] == ["Leeds", "U.S. Steel"]


def test_shape_features_see_the_case_the_uncased_encoder_drops(tokenizer: AutoTokenizer) -> None:
    for text, capital, caps_sentence in (("May said no", 1.0, 0.0), ("may said no", 0.0, 0.0),
                                         ("MAY SAID NO", 1.0, 1.0)):
        enc = tokenizer([text], return_offsets_mapping=True)
        features = shape_features(text, enc.word_ids(0), enc["offset_mapping"][0])
        assert features[1, 0] == capital and features[1, 5] == caps_sentence
        assert (features[0] == 0).all()  # [CLS] carries no word


def test_shape_features_are_per_word_and_mark_each_word_start(tokenizer: AutoTokenizer) -> None:
    text = "Unbelievably UNHCR said 42 !"
    enc = tokenizer([text], return_offsets_mapping=True)
    word_ids = enc.word_ids(0)
    features = shape_features(text, word_ids, enc["offset_mapping"][0])
    pieces = {w: [i for i, x in enumerate(word_ids) if x == w] for w in set(word_ids) - {None}}
    assert max(len(rows) for rows in pieces.values()) > 1  # some word is several subwords
    for rows in pieces.values():
        assert all((features[i, :7] == features[rows[0], :7]).all() for i in rows)  # its word's features
        assert [features[i, 7] for i in rows] == [1.0] + [0.0] * (len(rows) - 1)  # the start, once
    by_word = {text[a:b]: features[first] for first, a, b in word_spans(word_ids, enc["offset_mapping"][0])}
    assert by_word["UNHCR"][1] == 1.0 and by_word["42"][3] == 1.0 and by_word["!"][4] == 1.0
    assert by_word["Unbelievably"][6] == 1.0 and by_word["said"][2] == 1.0
    assert (features[[i for i, w in enumerate(word_ids) if w is None]] == 0).all()


@pytest.fixture(scope="module")
def ner() -> MiniLMNER:
    ensure_default_models(progress=lambda _msg: None)
    model = load_ner()
    assert isinstance(model, MiniLMNER)
    return model


def _pairs(ents: list) -> set[tuple[str, str]]:
    return {(e.text, e.label) for e in ents}


def test_clubs_named_after_cities_are_organisations(ner: MiniLMNER) -> None:
    """The spaCy default tagged 174 of 183 such clubs as places on CoNLL-2003."""
    text = "Leeds beat Chelsea 2-1 on Saturday while Barcelona drew with Valencia in Spain."
    found = _pairs(ner.predict([text])[0])
    assert {("Leeds", "ORG"), ("Chelsea", "ORG"), ("Barcelona", "ORG"), ("Valencia", "ORG")} <= found
    assert ("Spain", "LOC") in found
    spacy = _pairs(load_ner(SPACY_NER).predict([text])[0])
    assert ("Leeds", "ORG") not in spacy or ("Chelsea", "ORG") not in spacy  # what this model fixed


def test_all_caps_headlines(ner: MiniLMNER) -> None:
    found = _pairs(ner.predict(["SOCCER - JAPAN GET LUCKY WIN , CHINA IN SURPRISE DEFEAT ."])[0])
    assert ("JAPAN", "LOC") in found and ("CHINA", "LOC") in found


def test_spans_index_the_original_text_and_batching_changes_nothing(ner: MiniLMNER) -> None:
    texts = ["Angela Merkel met Microsoft in München on Monday.", "", "no entities here",
             "@united lost my bag at JFK again 😡 #travel", "Reuters reported that the U.S. economy grew."]
    batch = ner.predict(texts)
    assert batch == [ner.predict([t])[0] for t in texts]
    for text, ents in zip(texts, batch, strict=True):
        assert all(text[e.start : e.end] == e.text and 0 < e.score <= 1 for e in ents)
    assert {("Angela Merkel", "PER"), ("Microsoft", "ORG"), ("München", "LOC")} <= _pairs(batch[0])


def test_one_encoder_pass_serves_sentiment_and_entities(ner: MiniLMNER) -> None:
    enricher = load_enricher()
    assert enricher.shared_encoder
    texts = ["Leeds beat Chelsea and I love it!", "Terrible service from Delta in Atlanta today.",
             " ".join(["Angela Merkel met Microsoft in Berlin."] * 30)]  # > the sentiment pass's 128 tokens
    shared = enricher.enrich(texts)
    apart = TextEnricher(enricher.sentiment, ner)
    apart.shared_encoder = False
    separate = apart.enrich(texts)
    assert [s.label for s, _ in shared] == [s.label for s, _ in separate]
    assert [_pairs(e) for _, e in shared] == [_pairs(e) for _, e in separate]
    assert len(shared[2][1]) >= 60  # entities past the 128th token too: NER encoded that text itself


def test_a_shallower_encoder_is_the_first_layers_and_heads_built_on_it_share_its_pass(tmp_path: Path) -> None:
    """`streamsense models build --encoder-layers 4`: both heads read a 4-layer cut of the same encoder, so a
    worker still runs one encoder pass; a head built on 4 layers never pairs with a 6-layer sentiment model."""
    full, cut = load_encoder(), load_encoder(4)
    assert len(cut.encoder.layer) == cut.config.num_hidden_layers == 4
    full_state = full.state_dict()
    assert all(torch.equal(t, full_state[k]) for k, t in cut.state_dict().items())
    assert len(full_state) > len(cut.state_dict())
    for bad in (0, 7):
        with pytest.raises(ValueError, match="between 1 and 6"):
            load_encoder(bad)
    assert (head_layers(), head_layers(4), head_layers(2)) == ((4, 5, 6), (2, 3, 4), (1, 2))

    new_head_dir(tmp_path / "ner", encoder_layers=4)  # an untrained head: the seam, not the quality
    ner = MiniLMNER(tmp_path / "ner")
    assert ner.layers == (2, 3, 4) and ner_encoder_layers(tmp_path / "ner") == 4
    (model4, tokenizer), (model6, _) = new_model("t", "4", layers=4), new_model("t", "6")
    assert model4.config.num_hidden_layers == 4
    shallow, whole = TransformerSentiment(model4, tokenizer, "t@4"), TransformerSentiment(model6, tokenizer, "t@6")
    assert shares_encoder(shallow, ner) and not shares_encoder(whole, ner)
    texts = ["Leeds beat Chelsea and I love it!", "Terrible service from Delta in Atlanta today."]
    shared = TextEnricher(shallow, ner).enrich(texts)
    apart = TextEnricher(shallow, ner)
    apart.shared_encoder = False
    separate = apart.enrich(texts)
    assert [s.label for s, _ in shared] == [s.label for s, _ in separate]
    assert [_pairs(e) for _, e in shared] == [_pairs(e) for _, e in separate]


def test_serving_the_head_unpacked_gives_the_packed_tags_for_any_batch() -> None:
    torch.manual_seed(0)
    head = TaggerHead(40, proj=16, hidden=8).eval()
    with torch.inference_mode():
        for batch in ([7], [3, 11, 5], [12, 1, 12, 4, 9, 2]):
            x = torch.nn.utils.rnn.pad_sequence([torch.randn(n, 40) for n in batch], batch_first=True)
            packed, unpacked = head(x, batch), head.infer(x, batch)
            for row, n in enumerate(batch):
                assert torch.allclose(packed[row, :n], unpacked[row, :n], atol=1e-5)
                alone = head.infer(x[row : row + 1, :n], [n])[0]  # the same text with no batch around it
                assert torch.allclose(alone, unpacked[row, :n], atol=1e-5)
            # padding is never read: garbage after a row's length changes nothing before it
            noisy = x.clone()
            for row, n in enumerate(batch):
                noisy[row, n:] = 1e3
            assert torch.allclose(head.infer(noisy, batch)[0, : batch[0]], unpacked[0, : batch[0]], atol=1e-5)
