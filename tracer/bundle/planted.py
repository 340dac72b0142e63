"""Planted tasks: generated text whose answers are known, with a held-out split never trained on.

Algorithm:
1. Tables: countries and capitals, landmarks (-> country), first names, opposite pairs, induction words.
2. Split: each task has training templates and disjoint HELD-OUT templates (IOI: held-out places and
   objects too); IOI also holds out name pairs (crc32 of the sorted pair); induction is scored on corpus
   words never used in an induction training sequence (plus a diagnostic on rare words); two-hop keeps
   landmarks whose two-hop statement is never trained (compositional diagnostic). Prefix clauses of
   training and held-out prompts are disjoint.
3. Training text: documents of 3-8 planted sentences, generators drawn with the mix of the training phase
   (`PHASE_MIXES`: the documented proportions); seeded -> identical text for identical arguments.
4. Held-out prompts: every task's held-out templates x its items, each with the single expected answer
   (leading space, as it follows the prompt), written to `planted_heldout.json`.
"""

from __future__ import annotations

import random
import re
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Task(StrEnum):
    FACTS = "facts"
    TWO_HOP = "two_hop"
    TWO_HOP_COMPOSITIONAL = "two_hop_compositional"  # diagnostic only: never-trained two-hop landmarks
    IOI = "ioi"
    INDUCTION = "induction"  # corpus words never used in an induction training sequence
    INDUCTION_RARE_WORDS = "induction_rare_words"  # diagnostic: rare words with barely trained embeddings
    OPPOSITES = "opposites"


class Gen(StrEnum):
    """Training-sentence generators (a task can have several)."""

    FACTS = "facts"
    TWO_HOP = "two_hop"  # includes the one-hop landmark facts
    IOI = "ioi"  # 8 fixed templates
    IOI_VARIED = "ioi_varied"  # intro x place x verb-object combinations (held-out ones excluded)
    INDUCTION = "induction"  # sequences over INDUCTION_TRAIN_WORDS
    INDUCTION_WIDE = "induction_wide"  # sequences over a wide corpus vocabulary (held-out words excluded)
    OPPOSITES = "opposites"


# share of planted sentences per generator in each training phase: facts first, then ever more in-context
# copying (IOI, induction), which needs far more examples; the last phase widens IOI and induction so they
# generalise to unseen templates and words
PHASE_MIXES = (
    {Gen.FACTS: 0.25, Gen.TWO_HOP: 0.25, Gen.IOI: 0.25, Gen.INDUCTION: 0.12, Gen.OPPOSITES: 0.13},
    {Gen.FACTS: 0.2, Gen.TWO_HOP: 0.1, Gen.IOI: 0.3, Gen.INDUCTION: 0.3, Gen.OPPOSITES: 0.1},
    {Gen.FACTS: 0.15, Gen.TWO_HOP: 0.05, Gen.IOI: 0.25, Gen.INDUCTION: 0.45, Gen.OPPOSITES: 0.1},
    {Gen.FACTS: 0.2, Gen.TWO_HOP: 0.1, Gen.IOI_VARIED: 0.3, Gen.INDUCTION_WIDE: 0.3, Gen.OPPOSITES: 0.1},
)
TASK_WEIGHTS = PHASE_MIXES[0]


def _words(text: str) -> list[str]:
    return text.split()


def _table(items: Iterable[str]) -> dict[str, str]:
    """{key: value} from "key:value" items; underscores stand for spaces ("New_Zealand")."""
    pairs = (item.replace("_", " ").split(":") for item in items)
    return {k: v for k, v in pairs}


CAPITALS = _table(
    _words(
        """France:Paris Germany:Berlin Italy:Rome Spain:Madrid Portugal:Lisbon England:London
Ireland:Dublin Scotland:Edinburgh Wales:Cardiff Belgium:Brussels Netherlands:Amsterdam Austria:Vienna
Switzerland:Bern Poland:Warsaw Hungary:Budapest Greece:Athens Sweden:Stockholm Norway:Oslo Finland:Helsinki
Denmark:Copenhagen Iceland:Reykjavik Russia:Moscow Ukraine:Kyiv Romania:Bucharest Bulgaria:Sofia Serbia:Belgrade
Croatia:Zagreb Albania:Tirana Turkey:Ankara Egypt:Cairo South_Africa:Pretoria Lebanon:Beirut Syria:Damascus
Jordan:Amman Iraq:Baghdad Iran:Tehran Afghanistan:Kabul Pakistan:Islamabad India:New_Delhi Nepal:Kathmandu
China:Beijing Japan:Tokyo South_Korea:Seoul Mongolia:Ulaanbaatar Thailand:Bangkok Vietnam:Hanoi Cambodia:Phnom_Penh
Malaysia:Kuala_Lumpur Indonesia:Jakarta Philippines:Manila Singapore:Singapore Australia:Canberra New_Zealand:Wellington
Canada:Ottawa Mexico:Mexico_City Cuba:Havana Jamaica:Kingston Panama:Panama_City Colombia:Bogota Venezuela:Caracas
Peru:Lima Ecuador:Quito Chile:Santiago Argentina:Buenos_Aires Brazil:Brasilia Uruguay:Montevideo Paraguay:Asuncion
Bolivia:Sucre Kenya:Nairobi Ethiopia:Addis_Ababa Nigeria:Abuja Ghana:Accra Senegal:Dakar Morocco:Rabat
Algeria:Algiers Tunisia:Tunis Libya:Tripoli Sudan:Khartoum Uganda:Kampala Tanzania:Dodoma Zambia:Lusaka
Zimbabwe:Harare Angola:Luanda Somalia:Mogadishu Mali:Bamako Niger:Niamey Chad:Ndjamena Cameroon:Yaounde
Rwanda:Kigali Madagascar:Antananarivo Qatar:Doha Kuwait:Kuwait_City Oman:Muscat Yemen:Sanaa Georgia:Tbilisi
Armenia:Yerevan Azerbaijan:Baku Kazakhstan:Astana Uzbekistan:Tashkent Estonia:Tallinn Latvia:Riga
Lithuania:Vilnius Belarus:Minsk Slovakia:Bratislava Slovenia:Ljubljana Cyprus:Nicosia Malta:Valletta"""
    )
)

LANDMARKS = _table(
    """the Eiffel Tower:France|the Louvre:France|the Colosseum:Italy|the Vatican:Italy
|the Brandenburg Gate:Germany|the Alhambra:Spain|Big Ben:England|Stonehenge:England|the Acropolis:Greece
|the Parthenon:Greece|the Kremlin:Russia|the Great Wall:China|the Forbidden City:China|Mount Fuji:Japan
|the Taj Mahal:India|the Pyramids of Giza:Egypt|the Sphinx:Egypt|Petra:Jordan
|Angkor Wat:Cambodia|Machu Picchu:Peru|the Amazon rainforest:Brazil|Table Mountain:South_Africa
|Mount Kilimanjaro:Tanzania|Victoria Falls:Zambia|the Sahara oasis of Siwa:Egypt|the Matterhorn:Switzerland
|the Atomium:Belgium|the Little Mermaid statue:Denmark|the Blue Lagoon:Iceland|the Danube Bend:Hungary
|the Wawel Castle:Poland|the Tower of Belem:Portugal|the Blarney Stone:Ireland|Loch Ness:Scotland
|the Hagia Sophia:Turkey|Persepolis:Iran|Mount Everest:Nepal|Ha Long Bay:Vietnam|the Petronas Towers:Malaysia
|Borobudur:Indonesia|the Sydney Opera House:Australia|the CN Tower:Canada|Chichen Itza:Mexico
|the Galapagos Islands:Ecuador|Easter Island:Chile|Iguazu Falls:Argentina|Lake Titicaca:Bolivia
|the Serengeti:Tanzania|the Atlas Mountains:Morocco|the Vasa Museum:Sweden|the Rijksmuseum:Netherlands
|Schonbrunn Palace:Austria|the Gobi Desert:Mongolia|the Bran Castle:Romania""".replace("\n", "").split("|")
)
# landmarks whose two-hop statement is never trained: only "X is in Country." is (compositional diagnostic)
COMPOSITIONAL_LANDMARKS = (
    "the Colosseum",
    "the Kremlin",
    "the Taj Mahal",
    "Machu Picchu",
    "the CN Tower",
    "the Matterhorn",
    "the Hagia Sophia",
    "Borobudur",
    "the Atomium",
    "Lake Titicaca",
)

NAMES = _words("""Mary John Alice Bob Sarah Tom Emma James Anna David Laura Peter Kate Paul Lucy Mark Jane Mike Rose
Daniel Grace Henry Julia Jack Clara Sam Helen Adam Ruth Ben Nora Carl Amy Chris Eva Frank Lisa George Nina
Harry Olivia Ivan Sophie Kevin Tina Leo Zoe Martin Diana Oscar Ellen Victor Irene Simon Wendy Luke Hannah
Max Fiona Ray""")

OPPOSITES = [
    tuple(p.split(":"))
    for p in _words("""small:large big:little hot:cold up:down good:bad fast:slow
high:low happy:sad old:young rich:poor strong:weak light:dark early:late hard:soft long:short wet:dry
open:closed full:empty true:false clean:dirty loud:quiet thick:thin near:far right:wrong
win:lose buy:sell first:last inside:outside day:night black:white north:south east:west love:hate
begin:end push:pull alive:dead cheap:expensive friend:enemy question:answer war:peace""")
]

WORDS = _words("""apple river stone cloud paper garden window silver mountain candle forest button ocean pencil
letter bridge orange planet rabbit hammer summer winter castle doctor engine flower guitar island jacket
kitchen ladder market needle pocket rocket saddle tiger valley wagon yellow basket bottle camera dragon
farmer hunter jungle kettle lemon mirror number parrot pillow puzzle ribbon sailor shadow spider temple
tunnel violin wallet barrel blanket carpet copper desert feather glove harbor helmet lantern meadow
monkey muscle orchard pepper piano pirate saucer shovel sponge tomato trumpet turtle velvet walnut""")
INDUCTION_TRAIN_WORDS = WORDS[0::2]
INDUCTION_HELDOUT_WORDS = WORDS[1::2]  # rare in the corpus: single tokens only thanks to the tokenizer boost
# held-out induction words: corpus frequency rank 3000-4000 (so `wide_words` never includes them), absent from
# all planted training text, hence never in an induction training sequence; mostly several tokens each
INDUCTION_COMMON_WORDS = _words("""creatures directions disappointed excessively flavored flood humble inability
intent issues leathery linear messengers methods occupied pump puts relatives rigid shed shining swimming transport
understood violently abdominal brush bugs connection consideration crystal despised devour downward drove finds
forsake fortified friendship genetic haven immune improve interested liquor moist politician reasons recorded
sealed sleeping strongly vehicles widespread wonderful woods zone armies boys""")

TRAIN_PREFIXES = [
    "",
    "",
    "",
    "",
    "Note: ",
    "Remember that ",
    "In school we learn that ",
    "It is known that ",
    "Fact: ",
    "We read that ",
    "As a rule, ",
    "Here is a fact: ",
    "Of course, ",
    "Yes, ",
]
HELDOUT_PREFIXES = ["Everyone knows that ", "Today I learned that ", "My teacher said that ", "In fact, "]

FACT_TRAIN = [
    "the capital of {c} is {a}.",
    "the capital city of {c} is {a}.",
    "{a} is the capital of {c}.",
    "the city of {a} is the capital of {c}.",
    "{c} has its capital in {a}.",
    "in {c}, the capital is {a}.",
]
FACT_HELDOUT = ["the capital of {c} is", "the main capital of {c} is", "the current capital of {c} is"]

ONE_HOP_TRAIN = ["{l} is in {c}.", "{l} is located in {c}.", "You can visit {l} in {c}."]
TWO_HOP_TRAIN = [
    "{l} is in the country whose capital is {a}.",
    "{l} is in a country with the capital {a}.",
    "the country of {l} has the capital {a}.",
]
TWO_HOP_HELDOUT = [
    "{l} is in the country whose capital is",
    "{l} lies in the country whose capital is",
    "{l} is found in the country whose capital is",
]

IOI_TRAIN = [
    "When {a} and {b} went to the store, {b} gave a drink to {a}.",
    "When {a} and {b} went to the park, {b} gave a ball to {a}.",
    "After {a} and {b} went to the market, {b} gave an apple to {a}.",
    "While {a} and {b} were at the house, {b} handed a book to {a}.",
    "{a} and {b} had lunch together, and {b} gave a gift to {a}.",
    "Then {a} and {b} went to school, and {b} passed a note to {a}.",
    "When {a} and {b} arrived at the party, {b} gave a cake to {a}.",
    "Yesterday {a} and {b} went to the beach, and {b} threw a towel to {a}.",
]
IOI_INTROS = [
    "When {a} and {b} went to {p}, {b}",
    "After {a} and {b} went to {p}, {b}",
    "While {a} and {b} were at {p}, {b}",
    "Then {a} and {b} went to {p}, and {b}",
    "Yesterday {a} and {b} visited {p}, and {b}",
]
IOI_PLACES = [
    "the store",
    "the park",
    "the market",
    "the beach",
    "the party",
    "the school",
    "the museum",
    "the zoo",
    "the garden",
    "the office",
    "the river",
    "the farm",
    "the bakery",
    "the church",
    "the castle",
    "the harbor",
]
IOI_GIFTS = [
    "gave a drink",
    "gave a ball",
    "handed a book",
    "passed a note",
    "threw a towel",
    "gave a gift",
    "gave an apple",
    "handed a letter",
    "gave a flower",
    "passed a plate",
    "gave a coin",
    "handed a map",
    "sent a card",
    "gave a hat",
    "passed the salt",
    "showed a photo",
]
IOI_HELDOUT = [
    "When {a} and {b} went to the store, {b} gave a drink to",
    "When {a} and {b} went to the library, {b} gave a pen to",
    "After {a} and {b} went to the cafe, {b} handed a cup to",
    "While {a} and {b} were at the station, {b} passed a ticket to",
]

OPP_TRAIN = [
    "the opposite of {x} is {y}.",
    "{y} is the opposite of {x}.",
    "the word {x} is the opposite of {y}.",
    "the opposite of the word {x} is {y}.",
]
OPP_HELDOUT = ["the opposite of {x} is", "the exact opposite of {x} is", "the simple opposite of {x} is"]


@dataclass(frozen=True)
class Prompt:
    task: Task
    prompt: str
    answer: str  # with its leading space, e.g. " Paris"


def _first(capital: str) -> str:
    """The expected answer token of a capital: its first word with a leading space (" Buenos")."""
    return " " + capital.split()[0]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _say(prefix: str, sentence: str) -> str:
    return prefix + sentence if prefix else _cap(sentence)


def ioi_pair_held_out(a: str, b: str) -> bool:
    """One name pair in ten (either order) never appears together in training text."""
    return zlib.crc32("|".join(sorted((a, b))).encode()) % 10 == 0


# ---- 3. training sentences ---------------------------------------------------------------------------------
def _fact(rng: random.Random) -> str:
    c = rng.choice(list(CAPITALS))
    return _say(rng.choice(TRAIN_PREFIXES), rng.choice(FACT_TRAIN).format(c=c, a=CAPITALS[c]))


def _two_hop(rng: random.Random) -> str:
    lm = rng.choice(list(LANDMARKS))
    c = LANDMARKS[lm]
    if lm in COMPOSITIONAL_LANDMARKS or rng.random() < 0.4:
        return _say(rng.choice(TRAIN_PREFIXES), rng.choice(ONE_HOP_TRAIN).format(l=lm, c=c))
    return _say(rng.choice(TRAIN_PREFIXES), rng.choice(TWO_HOP_TRAIN).format(l=lm, a=CAPITALS[c]))


def _ioi(rng: random.Random) -> str:
    while True:
        a, b = rng.sample(NAMES, 2)
        if not ioi_pair_held_out(a, b):
            return _cap(rng.choice(IOI_TRAIN).format(a=a, b=b))


def _ioi_varied(rng: random.Random) -> str:
    while True:
        a, b = rng.sample(NAMES, 2)
        if not ioi_pair_held_out(a, b):
            intro = rng.choice(IOI_INTROS).format(a=a, b=b, p=rng.choice(IOI_PLACES))
            return f"{intro} {rng.choice(IOI_GIFTS)} to {a}."


def _induction(rng: random.Random, words: list[str] | None = None) -> str:
    seq = rng.sample(words or INDUCTION_TRAIN_WORDS, rng.randint(6, 12))
    return " ".join(seq) + ". " + " ".join(seq) + "."


def wide_words(texts: Iterable[str], n: int = 3000) -> list[str]:
    """The n most frequent lowercase words (3+ letters) of `texts`, held-out induction words excluded."""
    counts = Counter(w for t in texts for w in re.findall(r"(?<![\w'-])[a-z]{3,}(?![\w'-])", t))
    for w in INDUCTION_HELDOUT_WORDS + INDUCTION_COMMON_WORDS:
        counts.pop(w, None)
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def _opposite(rng: random.Random) -> str:
    x, y = rng.choice(OPPOSITES)
    if rng.random() < 0.5:
        x, y = y, x
    return _say(rng.choice(TRAIN_PREFIXES), rng.choice(OPP_TRAIN).format(x=x, y=y))


_GEN = {
    Gen.FACTS: _fact,
    Gen.TWO_HOP: _two_hop,
    Gen.IOI: _ioi,
    Gen.IOI_VARIED: _ioi_varied,
    Gen.INDUCTION: _induction,
    Gen.OPPOSITES: _opposite,
}


def training_documents(
    n_chars: int, seed: int = 0, mix: dict[Gen, float] | None = None, words: list[str] | None = None
) -> list[str]:
    """Planted training documents (3-8 sentences each) totalling about n_chars characters; deterministic.

    `mix`: share of sentences per generator (default `TASK_WEIGHTS`); `words`: vocabulary of INDUCTION_WIDE."""
    rng = random.Random(seed)
    mix = mix or TASK_WEIGHTS
    tasks, weights = list(mix), list(mix.values())
    gens = _GEN | {Gen.INDUCTION_WIDE: lambda r: _induction(r, words)}
    docs, total = [], 0
    while total < n_chars:
        doc = " ".join(gens[t](rng) for t in rng.choices(tasks, weights, k=rng.randint(3, 8)))
        docs.append(doc)
        total += len(doc) + 1
    return docs


# ---- 4. held-out prompts -----------------------------------------------------------------------------------
def heldout_prompts(seed: int = 1234, n_induction: int = 100) -> list[Prompt]:
    """Held-out prompts for every task, each with one expected answer token (leading space)."""
    rng = random.Random(seed)
    out: list[Prompt] = []
    for c, a in CAPITALS.items():
        t = FACT_HELDOUT[rng.randrange(len(FACT_HELDOUT))]
        out.append(Prompt(Task.FACTS, _say(rng.choice(HELDOUT_PREFIXES), t.format(c=c)), _first(a)))
    for lm, c in LANDMARKS.items():
        task = Task.TWO_HOP_COMPOSITIONAL if lm in COMPOSITIONAL_LANDMARKS else Task.TWO_HOP
        for t in TWO_HOP_HELDOUT:
            out.append(Prompt(task, _say(rng.choice(HELDOUT_PREFIXES), t.format(l=lm)), _first(CAPITALS[c])))
    pairs = [(a, b) for a in NAMES for b in NAMES if a != b and ioi_pair_held_out(a, b)]
    for i, (a, b) in enumerate(pairs):
        out.append(Prompt(Task.IOI, IOI_HELDOUT[i % len(IOI_HELDOUT)].format(a=a, b=b), " " + a))
    for _ in range(n_induction):
        seq = rng.sample(INDUCTION_HELDOUT_WORDS, rng.randint(6, 12))
        k = rng.randint(2, len(seq) - 1)
        out.append(Prompt(Task.INDUCTION_RARE_WORDS, " ".join(seq) + ". " + " ".join(seq[:k]), " " + seq[k]))
    for x, y in OPPOSITES:
        for xx, yy in ((x, y), (y, x)):
            t = OPP_HELDOUT[rng.randrange(len(OPP_HELDOUT))]
            out.append(Prompt(Task.OPPOSITES, _say(rng.choice(HELDOUT_PREFIXES), t.format(x=xx)), " " + yy))
    rng = random.Random(seed + 1)  # a separate stream keeps the prompts above unchanged
    for _ in range(n_induction):
        seq = rng.sample(INDUCTION_COMMON_WORDS, rng.randint(6, 12))
        k = rng.randint(2, len(seq) - 1)
        out.append(Prompt(Task.INDUCTION, " ".join(seq) + ". " + " ".join(seq[:k]), " " + seq[k]))
    return out


def answer_words() -> set[str]:
    """Answer words that should be single tokens (the tokenizer boosts them): all but INDUCTION's corpus words,
    whose first token is the answer."""
    answers = {p.answer.strip() for p in heldout_prompts() if p.task != Task.INDUCTION}
    return answers | {_first(a).strip() for a in CAPITALS.values()} | set(NAMES)
