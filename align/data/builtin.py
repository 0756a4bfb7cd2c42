"""The embedded task: product reviews, and a gold judge that rewards positive, on-topic reviews.

In the spirit of the DPO paper's controlled-sentiment IMDb experiment. A seeded grammar writes
reviews whose sentences each carry a known polarity. The SFT conversations answer "write a review
of X" with realistic, *mixed* reviews, so the SFT model is mediocre under the gold judge and
alignment has room: the judge wants every sentence positive, about the product asked for, and
fluent. It is a lexicon-and-rules sentiment scorer over distinct well-formed sentences, so
repeating a word or a sentence earns nothing. Everything is deterministic and takes seconds.
"""

from __future__ import annotations

import math
import random
import re
import zlib

from align.data import verifiable
from align.errors import AlignError

CATEGORIES = {
    "blender": ["motor", "blades", "jug", "lid"], "kettle": ["spout", "handle", "heating element", "lid"],
    "toaster": ["slots", "browning dial", "crumb tray", "timer"], "coffee maker": ["carafe", "filter", "brew cycle", "hot plate"],
    "vacuum cleaner": ["suction", "brush head", "dust bin", "hose"], "desk lamp": ["bulb", "arm", "switch", "base"],
    "backpack": ["zippers", "straps", "pockets", "fabric"], "tent": ["poles", "rain fly", "floor", "pegs"],
    "keyboard": ["keys", "switches", "cable", "keycaps"], "mouse": ["scroll wheel", "buttons", "sensor", "grip"],
    "headphones": ["ear cushions", "headband", "bass", "microphone"], "speaker": ["bass", "volume knob", "bluetooth pairing", "speaker grille"],
    "phone case": ["corners", "buttons", "grip", "finish"], "smartwatch": ["screen", "strap", "heart rate sensor", "app"],
    "running shoes": ["soles", "laces", "cushioning", "heel"], "rain jacket": ["hood", "seams", "zip", "lining"],
    "frying pan": ["coating", "handle", "base", "rim"], "office chair": ["armrests", "wheels", "backrest", "seat"],
    "electric toothbrush": ["brush head", "timer", "charger", "bristles"], "air fryer": ["basket", "timer", "fan", "display"],
    "water bottle": ["lid", "seal", "insulation", "straw"], "bike light": ["beam", "mount", "battery", "switch"],
    "monitor": ["screen", "stand", "colours", "ports"], "router": ["range", "antennas", "app", "setup"],
}
GENERAL_ASPECTS = ["battery", "price", "design", "build quality", "delivery", "packaging", "customer service",
                   "instructions", "size", "weight", "warranty", "colour"]
SYLLABLES = ["zen", "mor", "va", "tri", "lux", "ka", "ro", "vel", "qui", "sto", "nex", "ori", "pal", "dun", "fe",
             "la", "bri", "tor", "mi", "sa", "gro", "vi", "ne", "cal"]
MODELS = ["X2", "Pro", "Mini", "300", "Max", "Air", "S", "Plus", "One", "Lite", "2000", "GT", "Neo", "Go", "Z5"]

# word -> polarity weight; the judge and the grammar share this lexicon
POSITIVE = {"excellent": 1.0, "great": 1.0, "wonderful": 1.0, "fantastic": 1.0, "superb": 1.0, "brilliant": 1.0,
            "reliable": 0.8, "sturdy": 0.8, "comfortable": 0.8, "quiet": 0.6, "fast": 0.6, "elegant": 0.8,
            "solid": 0.7, "smooth": 0.7, "impressive": 0.9, "perfect": 1.0, "good": 0.7, "nice": 0.6,
            "helpful": 0.7, "generous": 0.7, "durable": 0.8, "responsive": 0.7, "lovely": 0.8, "clever": 0.7,
            "love": 1.0, "recommend": 1.0, "happy": 0.9, "pleased": 0.9, "delighted": 1.0, "enjoy": 0.8,
            "worth": 0.8, "bargain": 0.8, "flawless": 1.0}
NEGATIVE = {"terrible": -1.0, "awful": -1.0, "poor": -0.9, "flimsy": -0.9, "noisy": -0.7, "slow": -0.7,
            "unreliable": -0.9, "awkward": -0.7, "cheap": -0.6, "disappointing": -0.9, "broken": -1.0,
            "useless": -1.0, "bad": -0.8, "rough": -0.6, "confusing": -0.7, "rude": -0.9, "late": -0.6,
            "fragile": -0.8, "clumsy": -0.7, "overpriced": -0.9, "hate": -1.0, "regret": -1.0, "annoyed": -0.8,
            "disappointed": -0.9, "return": -0.6, "avoid": -1.0, "faulty": -1.0, "mediocre": -0.6}
LEXICON = {**POSITIVE, **NEGATIVE}
NEGATORS = {"not", "never", "hardly", "no", "isn't", "wasn't", "don't", "didn't", "doesn't", "won't", "nothing"}
INTENSIFIERS = {"very": 1.4, "really": 1.4, "incredibly": 1.6, "extremely": 1.6, "truly": 1.4, "quite": 1.2,
                "so": 1.3, "absolutely": 1.6}
POS_ADJ = ["excellent", "great", "sturdy", "reliable", "comfortable", "quiet", "elegant", "solid", "smooth",
           "impressive", "durable", "responsive", "lovely", "superb", "brilliant", "fantastic"]
NEG_ADJ = ["terrible", "awful", "poor", "flimsy", "noisy", "slow", "unreliable", "awkward", "disappointing",
           "fragile", "clumsy", "rough", "confusing", "faulty", "mediocre", "useless"]
INTENS = ["", "", "very ", "really ", "quite ", "incredibly ", "truly ", "extremely "]
POS_TEMPLATES = [
    "The {a} is {i}{adj}.", "I found the {a} {i}{adj}.", "The {a} feels {i}{adj} and works well.",
    "Honestly, the {a} is {i}{adj}.", "Its {a} turned out {i}{adj}.", "I love how {adj} the {a} is.",
    "I would recommend this {c} to anyone.", "I am really happy with this {c}.", "The {a} is not bad at all.",
    "For the money, the {c} is a great bargain.", "After a month the {a} still seems {i}{adj}.",
    "My family enjoy using the {c} every day.", "The {a} never fails and stays {adj}.",
    "Setting it up was {i}smooth and the {a} is {adj}.", "The {b} {c} is worth every penny.",
    "Compared with my old one, the {a} is {i}{adj}.", "I was pleased that the {a} is so {adj}.",
]
NEG_TEMPLATES = [
    "The {a} is {i}{adj}.", "I found the {a} {i}{adj}.", "The {a} feels {i}{adj} and fails often.",
    "Honestly, the {a} is {i}{adj}.", "Its {a} turned out {i}{adj}.", "I hate how {adj} the {a} is.",
    "I would not recommend this {c} to anyone.", "I am really disappointed with this {c}.",
    "The {a} is not good at all.", "For the money, the {c} is overpriced.", "After a month the {a} already seems {adj}.",
    "I regret buying the {c} and plan to return it.", "The {a} broke and customer service was rude.",
    "Setting it up was {i}confusing and the {a} is {adj}.", "Avoid the {b} {c} if you can.",
    "Compared with my old one, the {a} is {i}{adj}.", "I was annoyed that the {a} is so {adj}.",
]
NEUTRAL_TEMPLATES = [
    "I bought the {b} {c} last {when}.", "I use the {b} {c} {how}.", "The {c} arrived in a {box} box.",
    "I got this {c} as a gift for my {who}.", "It replaced an older {c} that I had for years.",
    "I mostly use it {how}.", "The {a} comes in {colour}.", "I have owned the {b} {c} for {span}.",
]
FILL = {"when": ["week", "month", "spring", "winter", "summer", "year"], "how": ["every morning", "at weekends",
        "in the evening", "at work", "on trips", "most days"], "box": ["small", "large", "plain", "bright"],
        "who": ["sister", "brother", "father", "mother", "friend", "partner"], "colour": ["black", "white", "grey",
        "blue", "red", "green"], "span": ["two weeks", "a month", "three months", "half a year", "a year"]}
ASKS = ["Write a review of the {p}.", "Write a short review of the {p}.", "What do you think of the {p}?",
        "Review the {p} for me.", "Tell me about your experience with the {p}.", "Please review the {p}.",
        "How would you rate the {p}?", "Share your opinion of the {p}."]
PROSE = ["The {b} {c} is a {c} made for everyday use.", "Many shoppers compare the {b} {c} with other models.",
         "The {a} of the {b} {c} is its most discussed feature.", "Shops sell the {b} {c} in {colour} and grey.",
         "A {c} like this usually lasts a few years.", "People ask whether the {a} is easy to clean.",
         "The store said the {b} {c} would arrive within a {when}.", "My {who} asked me which {c} to buy.",
         "We looked at three of them before choosing the {b} {c}."]
LICENCE = "generated by align (Apache-2.0)"
BUILTINS = {"reviews": {
    "description": "Product reviews with a gold judge that rewards positive, on-topic, non-degenerate reviews.",
    "licence": LICENCE,
    "splits": {"pretrain": "about 1.5 MB of reviews of every polarity and prose about products (text)",
               "heldout_text": "about 50 KB of the same kind of text about held-out products (text)",
               "sft": "users ask for a review, the assistant writes a realistic mixed review (messages)",
               "prompts": "review requests for RL and preference sampling (prompt-only, conversational)",
               "eval_prompts": "review requests about held-out products (prompt-only, conversational)"},
}}
DEFAULT_SIZES = {"pretrain": 9000, "heldout_text": 300, "sft": 3000, "prompts": 2000, "eval_prompts": 200}
BUILTINS["parity"] = verifiable.DESCRIPTION  # the verifiable task (align.data.verifiable)


def brand(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 2, 3)))).capitalize()


def is_heldout_brand(name: str) -> bool:
    """A fixed ~15 % of brand names are only ever used for held-out prompts and text."""
    return zlib.crc32(name.encode()) % 100 < 15


def product(rng: random.Random, heldout: bool) -> tuple[str, str]:
    while True:
        b = brand(rng)
        if is_heldout_brand(b) == heldout:
            return f"{b} {rng.choice(MODELS)}", rng.choice(list(CATEGORIES))


def sentence(rng: random.Random, polarity: int, b: str, c: str) -> str:
    aspect = rng.choice(CATEGORIES[c] + GENERAL_ASPECTS)
    fill = {k: rng.choice(v) for k, v in FILL.items()}
    if polarity == 0:
        template = rng.choice(NEUTRAL_TEMPLATES)
        return template.format(a=aspect, b=b, c=c, **fill)
    templates, adjectives = (POS_TEMPLATES, POS_ADJ) if polarity > 0 else (NEG_TEMPLATES, NEG_ADJ)
    return rng.choice(templates).format(a=aspect, b=b, c=c, adj=rng.choice(adjectives), i=rng.choice(INTENS))


def review(rng: random.Random, b: str, c: str, p_positive: float) -> str:
    """An opening neutral sentence, then 2-5 opinion sentences, each positive with p_positive."""
    parts = [sentence(rng, 0, b, c)]
    for _ in range(rng.randint(2, 5)):
        parts.append(sentence(rng, 1 if rng.random() < p_positive else -1, b, c) if rng.random() > 0.15
                     else sentence(rng, 0, b, c))
    return " ".join(parts)


def document(rng: random.Random, heldout: bool) -> str:
    b, c = product(rng, heldout)
    if rng.random() < 0.65:
        return review(rng, b, c, rng.random())
    fill = {k: rng.choice(v) for k, v in FILL.items()}
    return " ".join(rng.choice(PROSE).format(a=rng.choice(CATEGORIES[c] + GENERAL_ASPECTS), b=b, c=c, **fill)
                    for _ in range(rng.randint(2, 5)))


def ask(rng: random.Random, heldout: bool) -> tuple[str, str, str]:
    b, c = product(rng, heldout)
    return rng.choice(ASKS).format(p=f"{b} {c}"), b, c


def load_builtin(name: str, split: str, seed: int = 0, size: int | None = None):
    import datasets

    if name not in BUILTINS:
        raise AlignError(f"builtin dataset {name!r} does not exist; available: {', '.join(BUILTINS)}.")
    if name == "parity":
        return verifiable.load_verifiable(split, seed=seed, size=size)
    if split not in DEFAULT_SIZES:
        raise AlignError(f"builtin dataset {name!r} has no split {split!r}; splits: {', '.join(DEFAULT_SIZES)}.")
    n = size or DEFAULT_SIZES[split]
    # Each split has its own random stream, so splits never share rows by accident.
    rng = random.Random(f"{name}/{split}/{seed}")
    heldout = split in ("heldout_text", "eval_prompts")
    if split in ("pretrain", "heldout_text"):
        return datasets.Dataset.from_dict({"text": [document(rng, heldout) for _ in range(n)]})
    rows = []
    for _ in range(n):
        question, b, c = ask(rng, heldout)
        if split == "sft":
            # Real reviews are mixed: the share of positive sentences varies from review to review.
            answer = review(rng, b, c, p_positive=rng.betavariate(2.0, 1.6))
            rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
        else:
            rows.append({"prompt": [{"role": "user", "content": question}]})
    return datasets.Dataset.from_list(rows)


# ---------------------------------------------------------------- the gold judge
WORD = re.compile(r"[a-z']+")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
MIN_SENTENCES = 3  # shorter reviews are averaged as if padded with neutral sentences


def prompt_text(prompt) -> str:
    """The last user message of a conversational prompt; strings pass through."""
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")


def sentence_polarity(words: list[str]) -> float:
    """Sum of lexicon weights; a negator within two words flips and halves, an intensifier scales."""
    total = 0.0
    for i, w in enumerate(words):
        weight = LEXICON.get(w)
        if weight is None:
            continue
        before = words[max(0, i - 3):i]
        if any(b in NEGATORS for b in before):
            weight = -0.5 * weight
        elif before and before[-1] in INTENSIFIERS:
            weight *= INTENSIFIERS[before[-1]]
        total += weight
    return math.tanh(total)


def well_formed(words: list[str]) -> bool:
    """At least four words, and no word (other than short function words) more than twice."""
    if len(words) < 4:
        return False
    counts: dict[str, int] = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    return all(n <= 2 or len(w) <= 3 for w, n in counts.items())


def asked_product(prompt: str) -> tuple[str, str] | None:
    """(brand, category) named in a review request, if any."""
    text = prompt.lower()
    for c in sorted(CATEGORIES, key=len, reverse=True):
        match = re.search(r"the (\w+) \w+ " + re.escape(c), text)
        if match:
            return match.group(1), c
    return None


def gold_score(prompt, response: str) -> float:
    """Mean polarity over distinct well-formed sentences, halved when off topic; in [-1, 1]."""
    sentences, seen = [], set()
    for raw in SENTENCE_END.split(response.strip()):
        words = WORD.findall(raw.lower())
        key = " ".join(words)
        if key and key not in seen and well_formed(words):
            seen.add(key)
            sentences.append(words)
    if not sentences:
        return -1.0
    sentiment = sum(sentence_polarity(w) for w in sentences) / max(len(sentences), MIN_SENTENCES)
    target = asked_product(prompt_text(prompt))
    if target is not None:
        text = response.lower()
        on_topic = target[0] in text or target[1] in text
        if not on_topic and sentiment > 0:
            sentiment *= 0.5
    return round(sentiment, 6)


def gold_judge(prompts: list, responses: list[str]) -> list[float]:
    """The task's oracle: how positive, on topic and fluent each review is (higher is better)."""
    return [gold_score(p, r) for p, r in zip(prompts, responses)]
