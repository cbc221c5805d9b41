"""Chinese GPT-2 the way the seed names it: uer/gpt2-chinese-cluecorpussmall (a GPT-2 with a BertTokenizer),
pulled from the fake hub with the same code as `manage.py pull_model`, then served by the engine over
/ws/chat/: Chinese streams without spaces between characters, the deltas concatenate to the reply, and
greedy decoding equals `model.generate`."""

from __future__ import annotations

import re

import pytest
import torch

from slm.generation import encode_prompt, make_decode
from slm.hub import pull_model
from tests.chat.test_consumer import collect, connect

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

CJK_SPACE = re.compile("[\u4e00-\u9fff] | [\u4e00-\u9fff]")


@pytest.fixture
def uer_chat(hub_env, registry, chat_settings):  # type: ignore[no-untyped-def]
    pulled = pull_model("uer/gpt2-chinese-cluecorpussmall", registry=registry, name="chat")
    assert pulled.version.ref == "chat@v0001" and registry.live_version("chat") == "v0001"
    return pulled.version


async def test_bert_tokenizer_gpt2_from_the_hub_streams_chinese_and_matches_generate(uer_chat, plain_user) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    params = {"do_sample": False, "max_new_tokens": 16, "repetition_penalty": 1.2, "stop": []}
    comm = await connect(plain_user)
    await comm.send_json_to({"type": "generate", "prompt": "你好", "params": params})
    start, tokens, end = await collect(comm)
    await comm.disconnect()
    assert start["model"] == "chat@v0001"
    assert "".join(tokens) == end["text"]

    tok = AutoTokenizer.from_pretrained(uer_chat.path)
    model = AutoModelForCausalLM.from_pretrained(uer_chat.path).eval()
    ids = encode_prompt(tok, "User: 你好\nAgent:")
    assert ids[0] == tok.cls_token_id and tok.sep_token_id not in ids
    assert end["usage"]["prompt_tokens"] == len(ids)
    out = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        do_sample=False,
        max_new_tokens=16,
        repetition_penalty=1.2,
    )[0, len(ids) :].tolist()
    if tok.sep_token_id in out:  # [SEP] ends a reply (the pull set it as eos)
        out = out[: out.index(tok.sep_token_id)]
    expected = make_decode(tok)(out)
    assert end["text"] == expected and end["usage"]["completion_tokens"] == len(out)
    # a real Chinese reply, streamed without the spaces BertTokenizer.decode puts between characters
    assert len(re.findall("[\u4e00-\u9fff]", expected)) >= 4, expected
    assert CJK_SPACE.search(expected) is None
    assert CJK_SPACE.search(tok.decode(out, skip_special_tokens=True)) is not None
