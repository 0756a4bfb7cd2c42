import textwrap

import pytest
import torch

from align.errors import AlignError
from align.eval.judge_factory import build_judge
from align.eval.judges import FunctionJudge, Judge, LLMJudge, RewardModelJudge

JUDGE_MODULE = '''
def length(prompts, responses):
    return [float(len(r)) for r in responses]

def picky(prompts, responses):
    return [1 / (len(r) - 3) for r in responses]  # ZeroDivisionError on a 3-character response

def short(prompts, responses):
    return [1.0]

def words(prompts, responses):
    return ["good" for _ in responses]

NOT_A_FUNCTION = 3
'''


@pytest.fixture
def judge_module(tmp_path, monkeypatch):
    (tmp_path / "my_judges.py").write_text(textwrap.dedent(JUDGE_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_judges"


def test_function_judge_scores_and_compares(judge_module):
    judge = build_judge("len", {"function": f"{judge_module}:length"})
    assert isinstance(judge, FunctionJudge)
    assert judge.score(["p", [{"role": "user", "content": "q"}]], ["ab", "abcd"]) == [2.0, 4.0]
    assert judge.compare(["p"] * 3, ["abc", "a", "xy"], ["a", "abc", "zw"]) == [1.0, 0.0, 0.5]
    tolerant = build_judge("len", {"function": f"{judge_module}:length", "tie_tolerance": 1.5})
    assert tolerant.compare(["p"] * 2, ["abc", "abcd"], ["ab", "a"]) == [0.5, 1.0]


@pytest.mark.parametrize("target, message", [
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
    ("my_judges:missing", "has no function 'missing'"),
    ("my_judges:NOT_A_FUNCTION", "not callable"),
    ("my_judges", "expected 'module:function'"),
])
def test_function_judge_import_errors(judge_module, target, message):
    with pytest.raises(AlignError, match=message):
        build_judge("gold", {"function": target})


def test_function_judge_bad_results_name_the_judge_and_sample(judge_module):
    with pytest.raises(AlignError, match=r"judge 'gold' failed on sample 2: ZeroDivisionError"):
        build_judge("gold", {"function": f"{judge_module}:picky"}).score(["p"] * 4, ["abcde", "ab", "abc", "x"])
    with pytest.raises(AlignError, match=r"judge 'gold' .* returned 1 scores for 3 responses"):
        build_judge("gold", {"function": f"{judge_module}:short"}).score(["p"] * 3, ["a", "b", "c"])
    with pytest.raises(AlignError, match=r"judge 'gold' returned 'good' for sample 0"):
        build_judge("gold", {"function": f"{judge_module}:words"}).score(["p"], ["a"])


def test_build_judge_rejects_unknown_specs(judge_module, tmp_path):
    with pytest.raises(AlignError, match=r"judges\.oracle: expected exactly one of"):
        build_judge("oracle", {"python": "x:y"})
    with pytest.raises(AlignError, match=r"judges\.oracle\.batch: a function judge has no option 'batch'"):
        build_judge("oracle", {"function": f"{judge_module}:length", "batch": 3})
    with pytest.raises(AlignError, match=r"judges\.rm\.reward_model: \$\{stages\.reward\}"):
        build_judge("rm", {"reward_model": "${stages.reward}"})


@pytest.fixture(scope="module")
def reward_model(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)  # the new score head
    return AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).eval()


PROMPTS = ["the cat", [{"role": "user", "content": "a phone ünï"}], "x"]
RESPONSES = ["is good.", "works really well and the battery is great", ""]


def test_reward_model_judge_matches_a_manual_forward_on_the_chat_text(reward_model, tiny_tokenizer):
    judge = RewardModelJudge(reward_model, tiny_tokenizer, batch_size=2)
    scores = judge.score(PROMPTS, RESPONSES)
    assert scores == judge.score(PROMPTS, RESPONSES)
    one_by_one = [judge.score([p], [r])[0] for p, r in zip(PROMPTS, RESPONSES)]
    assert scores == pytest.approx(one_by_one, abs=1e-5)
    for prompt, response, score in zip(PROMPTS, RESPONSES, scores):
        user = prompt if isinstance(prompt, str) else prompt[0]["content"]
        text = f"<|bos|><|user|>{user}<|eos|><|assistant|>{response}<|eos|>"
        ids = torch.tensor([tiny_tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            assert score == pytest.approx(float(reward_model(ids).logits[0, 0]), abs=1e-5)
    assert reward_model.config.pad_token_id == tiny_tokenizer.pad_token_id


def test_reward_model_judge_sees_what_trl_reward_trainer_trains_on(reward_model, tiny_tokenizer, tmp_path):
    """Same token ids as RewardTrainer's preprocessing, and the same scores as its collated batch."""
    import datasets
    from trl import RewardConfig, RewardTrainer

    pairs = datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": "the cat"}], "chosen": [{"role": "assistant", "content": "is good."}],
         "rejected": [{"role": "assistant", "content": "bad"}]},
        {"prompt": [{"role": "user", "content": "a phone ünï"}], "chosen": [{"role": "assistant", "content": "works"}],
         "rejected": [{"role": "assistant", "content": "breaks, really"}]},
    ])
    args = RewardConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], max_length=None,
                        per_device_train_batch_size=2)
    trainer = RewardTrainer(model=reward_model, args=args, train_dataset=pairs, processing_class=tiny_tokenizer)
    judge = RewardModelJudge(reward_model, tiny_tokenizer)
    prompts, chosen = list(pairs["prompt"]), [c[0]["content"] for c in pairs["chosen"]]
    assert [judge.encode(p, c) for p, c in zip(prompts, chosen)] == list(trainer.train_dataset["chosen_ids"])
    batch = next(iter(trainer.get_train_dataloader()))  # chosen then rejected, right-padded
    with torch.no_grad():
        trl_scores = reward_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    rejected = [r[0]["content"] for r in pairs["rejected"]]
    assert judge.score(prompts * 2, chosen + rejected) == pytest.approx(trl_scores.tolist(), abs=1e-5)


def test_reward_model_judge_refuses_a_causal_lm_folder(tiny_model_dir):
    with pytest.raises(AlignError, match="is not a reward model"):
        build_judge("rm", {"reward_model": str(tiny_model_dir)})


class ScriptedLLMJudge(LLMJudge):
    """An LLM judge whose answer log-probabilities come from a rule instead of the model."""

    def __init__(self, rule, **kwargs):
        super().__init__(**kwargs)
        self.rule = rule

    def answer_logprobs(self, texts):
        return torch.log_softmax(torch.tensor([self.rule(t) for t in texts], dtype=torch.float), -1)


def response_in(text: str, label: str) -> str:
    return text.split(f"Response {label}: ")[1].split("\n\n")[0]


def test_llm_judge_position_swap_cancels_position_bias(untied_model, tiny_tokenizer):
    always_first = ScriptedLLMJudge(lambda text: [2.0, -1.0], path_or_model=untied_model, tokenizer=tiny_tokenizer)
    assert always_first.compare(["p", "q", "r"], ["good", "bad", "x"], ["bad", "good", "y"]) == [0.5, 0.5, 0.5]


def test_llm_judge_position_swap_keeps_a_real_preference(untied_model, tiny_tokenizer):
    def likes_good(text):  # prefers whichever position holds "good", and also leans towards A
        return [3.0 * (response_in(text, "A") == "good") + 0.5, 3.0 * (response_in(text, "B") == "good")]

    judge = ScriptedLLMJudge(likes_good, path_or_model=untied_model, tokenizer=tiny_tokenizer)
    outcomes = judge.compare(["p", "q", "r"], ["good", "bad", "bad"], ["bad", "good", "bad"])
    assert outcomes[0] > 0.9 and outcomes[1] < 0.1 and outcomes[2] == 0.5
    assert outcomes[0] == pytest.approx(1 - outcomes[1])
    assert judge.score(["p", "q"], ["good", "bad"]) == [pytest.approx(outcomes[0]), 0.5]  # vs an empty reference


def test_llm_judge_with_a_real_model(untied_model, tiny_tokenizer):
    judge = LLMJudge(untied_model, tiny_tokenizer, batch_size=2)
    outcomes = judge.compare(PROMPTS, RESPONSES, ["bad", "the dog", ""])
    assert all(0 <= x <= 1 for x in outcomes)
    assert outcomes[2] == 0.5  # identical responses: the swap makes it an exact tie
    one_by_one = [judge.compare([p], [a], [b])[0] for p, a, b in zip(PROMPTS, RESPONSES, ["bad", "the dog", ""])]
    assert outcomes == pytest.approx(one_by_one, abs=1e-5)
    with pytest.raises(AlignError, match="template"):
        LLMJudge(untied_model, tiny_tokenizer, template="Is {prompt} answered well by {response}?")


def test_default_compare_uses_scores_with_ties():
    class Lengths(Judge):
        tie_tolerance = 1

        def score(self, prompts, responses):
            return [len(r) for r in responses]

    assert Lengths().compare(["p"] * 3, ["aaaa", "a", "aa"], ["a", "aaaa", "a"]) == [1.0, 0.0, 0.5]
