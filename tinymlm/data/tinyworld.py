"""tinyworld: a small, seeded world of true facts written out as English documents.

The default corpus of ``python -m tinymlm.train``. It needs no files and no network, it is the
same on every machine for a given seed, and it is built so that a small BERT trained for a few
CPU minutes learns real knowledge that can be *measured*:

* The lexicon below is a plain table of facts: countries (capital, region, language), animals
  (sound, food, home), things (color), and a few everyday scenes.
* Every fact is written in many phrasings (both directions, questions, pronouns). Some
  phrasings are **held out**: they never appear in training documents. ``fact_probes()`` turns
  the held-out phrasings into fill-in-the-blank questions, so a correct answer means the model
  knows the fact, not that it remembers a sentence.
* Every entity is one lowercase word, and ``vocabulary()`` lists every word the generator can
  write, so each entity is exactly one token and a single ``[MASK]`` can name it.

Regions follow the UN geoscheme (Africa, Americas, Asia, Europe, Oceania): North and South
America are two words, "Americas" is one. India's capital is written "delhi" (New Delhi lies
in Delhi) so that it stays one word.

    >>> docs = generate_documents(3, seed=0)     # the same three documents on every machine
    >>> probe = fact_probes()[0]                  # held-out phrasings, one [MASK] each
    >>> probe.relation, probe.text, probe.answer
    ('capital', 'What is the capital of France? It is [MASK].', 'paris')
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# --------------------------------------------------------------------------------------------
# The lexicon: true facts, one word per entity.
# --------------------------------------------------------------------------------------------

# country, capital, region (UN geoscheme), main language
COUNTRIES = [
    ("france", "paris", "europe", "french"),
    ("germany", "berlin", "europe", "german"),
    ("italy", "rome", "europe", "italian"),
    ("spain", "madrid", "europe", "spanish"),
    ("portugal", "lisbon", "europe", "portuguese"),
    ("britain", "london", "europe", "english"),
    ("ireland", "dublin", "europe", "english"),
    ("netherlands", "amsterdam", "europe", "dutch"),
    ("austria", "vienna", "europe", "german"),
    ("poland", "warsaw", "europe", "polish"),
    ("greece", "athens", "europe", "greek"),
    ("sweden", "stockholm", "europe", "swedish"),
    ("norway", "oslo", "europe", "norwegian"),
    ("finland", "helsinki", "europe", "finnish"),
    ("denmark", "copenhagen", "europe", "danish"),
    ("hungary", "budapest", "europe", "hungarian"),
    ("russia", "moscow", "europe", "russian"),
    ("japan", "tokyo", "asia", "japanese"),
    ("china", "beijing", "asia", "chinese"),
    ("india", "delhi", "asia", "hindi"),
    ("thailand", "bangkok", "asia", "thai"),
    ("vietnam", "hanoi", "asia", "vietnamese"),
    ("indonesia", "jakarta", "asia", "indonesian"),
    ("iran", "tehran", "asia", "persian"),
    ("pakistan", "islamabad", "asia", "urdu"),
    ("egypt", "cairo", "africa", "arabic"),
    ("morocco", "rabat", "africa", "arabic"),
    ("kenya", "nairobi", "africa", "swahili"),
    ("nigeria", "abuja", "africa", "english"),
    ("ghana", "accra", "africa", "english"),
    ("senegal", "dakar", "africa", "french"),
    ("brazil", "brasilia", "americas", "portuguese"),
    ("canada", "ottawa", "americas", "english"),
    ("peru", "lima", "americas", "spanish"),
    ("chile", "santiago", "americas", "spanish"),
    ("colombia", "bogota", "americas", "spanish"),
    ("cuba", "havana", "americas", "spanish"),
    ("australia", "canberra", "oceania", "english"),
]

# animal, plural, sound, food, home (None where no single everyday word fits)
ANIMALS = [
    ("cat", "cats", "meow", "fish", "house"),
    ("dog", "dogs", "woof", "bones", "kennel"),
    ("cow", "cows", "moo", "grass", "barn"),
    ("duck", "ducks", "quack", "bread", "pond"),
    ("sheep", "sheep", "baa", "grass", "field"),
    ("pig", "pigs", "oink", "corn", "sty"),
    ("horse", "horses", "neigh", "hay", "stable"),
    ("lion", "lions", "roar", "meat", "den"),
    ("owl", "owls", "hoot", "mice", "tree"),
    ("frog", "frogs", "croak", "flies", "pond"),
    ("snake", "snakes", "hiss", "mice", None),
    ("bee", "bees", "buzz", "nectar", "hive"),
    ("wolf", "wolves", "howl", "meat", "den"),
    ("mouse", "mice", "squeak", "cheese", "hole"),
    ("chicken", "chickens", "cluck", "corn", "coop"),
    ("bird", "birds", "tweet", "seeds", "nest"),
    ("bear", "bears", "growl", "honey", "cave"),
    ("donkey", "donkeys", "bray", "hay", "stable"),
    ("rabbit", "rabbits", None, "carrots", "burrow"),
    ("monkey", "monkeys", None, "bananas", "jungle"),
    ("panda", "pandas", None, "bamboo", "forest"),
    ("squirrel", "squirrels", None, "nuts", "tree"),
    ("spider", "spiders", None, "flies", "web"),
]

# thing (as written in a sentence), verb agreeing with it, color
THINGS = [
    ("the sky", "is", "blue"),
    ("the sea", "is", "blue"),
    ("grass", "is", "green"),
    ("leaves", "are", "green"),
    ("limes", "are", "green"),
    ("snow", "is", "white"),
    ("milk", "is", "white"),
    ("clouds", "are", "white"),
    ("chalk", "is", "white"),
    ("coal", "is", "black"),
    ("crows", "are", "black"),
    ("blood", "is", "red"),
    ("cherries", "are", "red"),
    ("tomatoes", "are", "red"),
    ("strawberries", "are", "red"),
    ("bananas", "are", "yellow"),
    ("lemons", "are", "yellow"),
    ("the sun", "is", "yellow"),
    ("carrots", "are", "orange"),
    ("pumpkins", "are", "orange"),
    ("grapes", "are", "purple"),
    ("plums", "are", "purple"),
    ("chocolate", "is", "brown"),
    ("coffee", "is", "brown"),
    ("flamingos", "are", "pink"),
]

# Everyday scenes, repeated verbatim: the showcase sentences of fill-mask.
SCENES = [
    "The cat sat on the mat.",
    "The quick brown fox jumps over the lazy dog.",
    "The dog chased the ball in the park.",
    "The sun rises in the east and sets in the west.",
    "The children played in the garden after school.",
    "She put the milk in the fridge.",
    "He read a book by the window.",
    "The baby slept in her bed all night.",
    "The bird sang in the tree in the morning.",
    "We ate bread and cheese for lunch.",
]

# Sentences about nothing in the tables: they make documents less predictable.
FILLERS = [
    "It was a sunny day.",
    "The weather was cold and wet.",
    "Many people like to travel.",
    "I like to read books in the evening.",
    "We walked home after dinner.",
    "She opened the window and looked outside.",
    "He drank a cup of tea.",
    "The train was late again.",
    "My friend told me a story.",
    "Everyone was happy that day.",
    "The teacher wrote on the board.",
    "They talked for a long time.",
    # These also teach the words of the held-out phrasings, in other contexts.
    "If you are tired, you can sleep.",
    "Look at the old map on the wall.",
    "The main road was closed.",
    "My favorite song is very old.",
    "Listen to the music.",
    "The noise outside woke me up.",
    "He wants a new bike.",
    "She sleeps late on the weekend.",
    "It was so cold that we stayed inside.",
    "We found a coin on the street.",
    "The shop is located near the station.",
    "Use a pen to write your name.",
    "We will paint the fence tomorrow.",
    "The movie was mostly good.",
    "My mother makes tea in the morning.",
    "Let us make a cake for her.",
    "You can find me at home.",
]

# --------------------------------------------------------------------------------------------
# Phrasings. Slots: {country} {capital} {region} {language} | {animal} {animals} {sound}
# {food} {home} | {thing} {be} {color}. "{region}" renders "europe" or "the americas".
# --------------------------------------------------------------------------------------------

COUNTRY_TRAIN = [
    "{capital} is the capital of {country}.",
    "The capital of {country} is {capital}.",
    "The capital city of {country} is {capital}.",
    "{capital} is the capital city of {country}.",
    "{country} ' s capital is {capital}.",
    "{capital} is a city in {country}.",
    "{capital} lies in {country}.",
    "The city of {capital} is the capital of {country}.",
    "Which city is the capital of {country}? It is {capital}.",
    "{capital}, the capital of {country}, is a big city.",
    "The government of {country} sits in {capital}.",
    "{country} is a country in {region}.",
    "{country} is in {region}.",
    "{country} lies in {region}.",
    "Where is {country}? It is in {region}.",
    "{country} is a country in {region}. Its capital is {capital}.",
    "People in {country} speak {language}.",
    "The language of {country} is {language}.",
    "Most people in {country} speak {language}.",
    "{language} is spoken in {country}.",
    "In {country}, people speak {language}.",
    "What language do people speak in {country}? They speak {language}.",
    "{country} is a country in {region}. People there speak {language}.",
    "The capital of {country} is {capital}, and people there speak {language}.",
    # Frames shared by several relations ("{country}'s capital / language", "the official
    # language", "the people of"): the relation word, not the frame, must decide the answer.
    "{country} ' s capital city is {capital}.",
    "{country} ' s language is {language}.",
    "The official language of {country} is {language}.",
    "The people of {country} speak {language}.",
    "{language} is the language of {country}.",
    "Name the capital of {country}: {capital}.",
    "{country} is part of {region}.",
    "{country} belongs to {region}.",
    "In what part of the world is {country}? It is in {region}.",
    # The parts that held-out sentences combine anew: "the country of ...", "the city of ...",
    # "can be found in", "is situated in", "mostly".
    "The country of {country} lies in {region}.",
    "{country} can be found in {region}.",
    "{country} is situated in {region}.",
    "The city of {capital} lies in {country}.",
    "{capital} can be found in {country}.",
    "{capital} is situated in {country}.",
    "In {country}, people mostly speak {language}.",
    "The first language of {country} is {language}.",
    "The government of {country} sits in the city of {capital}.",
    "{capital} lies in the country of {country}.",
    "People in the country of {country} speak {language}.",
]
# Follow-ups for a document about one entity: they name each fact once and the entity not
# at all, so a masked answer cannot be copied from elsewhere in the document.
COUNTRY_FOLLOWUPS = {
    "capital": ["Its capital is {capital}.", "Its capital city is {capital}."],
    "region": ["It is a country in {region}.", "It lies in {region}."],
    "language": ["People there speak {language}.", "Most people there speak {language}."],
}
COUNTRY_HELDOUT = [
    ("capital", "What is the capital of {country}? It is {capital}."),
    ("capital", "The capital of {country} is the city of {capital}."),
    ("capital_of", "The city of {capital} is located in {country}."),
    ("capital_of", "{capital} is found in the country of {country}."),
    ("region", "The country of {country} is located in {region}."),
    ("region", "You will find {country} in {region}."),
    ("language", "The main language of {country} is {language}."),
    ("language", "Which language is spoken in {country}? Mostly {language}."),
]
COUNTRY_DISTRACTORS = [
    "Many tourists visit {capital} every year.",
    "I would like to visit {country} one day.",
    "{country} is a beautiful country.",
    "My friend lives in {capital}.",
    "The streets of {capital} are busy.",
    "We learned some {language} at school.",
]

ANIMAL_TRAIN = [
    "The {animal} says {sound}.",
    "A {animal} goes {sound}.",
    "{animals} say {sound}.",
    "What does the {animal} say? It says {sound}.",
    "The sound of the {animal} is {sound}.",
    "The {animal} eats {food}.",
    "{animals} eat {food}.",
    "A {animal} likes to eat {food}.",
    "What do {animals} eat? They eat {food}.",
    "The food of the {animal} is {food}.",
    "The {animal} lives in a {home}.",
    "{animals} live in a {home}.",
    "Where does the {animal} live? It lives in a {home}.",
    "The home of the {animal} is a {home}.",
    "The {animal} lives in a {home} and eats {food}.",
    "{animals} like to eat {food}.",
    "The {animal} makes a {sound} sound.",
    "A {animal} makes its home in a {home}.",
    "The {animal} sleeps in a {home}.",
    "{animals} love {food}.",
    "A {animal} can say {sound}.",
]
ANIMAL_FOLLOWUPS = {
    "sound": ["It says {sound}."],
    "food": ["It eats {food}.", "It likes to eat {food}."],
    "home": ["It lives in a {home}."],
}
ANIMAL_HELDOUT = [
    ("sound", "Listen to the {animal}. It goes {sound}."),
    ("sound", "What sound does a {animal} make? It says {sound}."),
    ("food", "What does the {animal} eat? It eats {food}."),
    ("food", "The favorite food of {animals} is {food}."),
    ("home", "Where do {animals} live? They live in a {home}."),
    ("home", "You can find a {animal} in a {home}."),
]
ANIMAL_DISTRACTORS = [
    "I saw a {animal} yesterday.",
    "The {animal} is sleeping.",
    "My sister drew a picture of a {animal}.",
    "There are {animals} in the picture book.",
]

THING_TRAIN = [
    "{thing} {be} {color}.",
    "The color of {thing} is {color}.",
    "What color {be} {thing}? {thing} {be} {color}.",
    "Everyone knows that {thing} {be} {color}.",
    "{thing} {be} always {color}.",
    "{thing} {be} usually {color}.",
    "{thing} {be} very {color}.",
]
THING_HELDOUT = [
    ("color", "Look, {thing} {be} so {color}."),
    ("color", "What is the color of {thing}? It is {color}."),
]

# Training statements are sometimes wrapped in one of these, so that the same fact is met in
# more surroundings than the phrasings alone give: a model that has learned the fact, not the
# sentence, answers in any of them. "{s}" is the statement without its final period.
WRAPPERS = [
    "In fact, {s}.",
    "As everyone knows, {s}.",
    "It is true that {s}.",
    "We learned at school that {s}.",
    "I read in a book that {s}.",
    "Did you know that {s}?",
    "My teacher says that {s}.",
]

# relation -> (the slot it asks for, the slot it asks about)
RELATIONS = {
    "capital": ("capital", "country"),
    "capital_of": ("country", "capital"),
    "region": ("region", "country"),
    "language": ("language", "country"),
    "sound": ("sound", "animal"),
    "food": ("food", "animal"),
    "home": ("home", "animal"),
    "color": ("color", "thing"),
}

# Showcase inputs for fill-mask; the last one is a held-out phrasing.
SEED_SENTENCES = [
    "Paris is the capital of [MASK].",
    "The cat sat on the [MASK].",
    "The quick brown [MASK] jumps over the lazy dog.",
    "What is the capital of Japan? It is [MASK].",
]
SEED_ANSWERS = ["france", "mat", "fox", "tokyo"]

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MASK = "[MASK]"


@dataclass(frozen=True)
class Probe:
    """One fill-in-the-blank question: ``text`` holds exactly one [MASK]; ``answer`` is a word."""

    relation: str
    subject: str
    text: str
    answer: str


# --------------------------------------------------------------------------------------------
# Rendering a phrasing for one row of a table.
# --------------------------------------------------------------------------------------------

_PROPER = {w for row in COUNTRIES for w in row} | {"americas"}
_SLOT = re.compile(r"\{(\w+)\}")
_WORD = re.compile(r"\[MASK\]|[a-zA-Z0-9]+|[^\sa-zA-Z0-9]")


def _country_slots(row):
    country, capital, region, language = row
    return {"country": country, "capital": capital, "region": region, "language": language}


def _animal_slots(row):
    animal, animals, sound, food, home = row
    return {"animal": animal, "animals": animals, "sound": sound, "food": food, "home": home}


def _thing_slots(row):
    thing, be, color = row
    return {"thing": thing, "be": be, "color": color}


_TABLES = {  # table name -> (rows, slots of a row, train phrasings, held-out, distractors)
    "country": (COUNTRIES, _country_slots, COUNTRY_TRAIN, COUNTRY_HELDOUT, COUNTRY_DISTRACTORS),
    "animal": (ANIMALS, _animal_slots, ANIMAL_TRAIN, ANIMAL_HELDOUT, ANIMAL_DISTRACTORS),
    "thing": (THINGS, _thing_slots, THING_TRAIN, THING_HELDOUT, []),
}


def _fits(template: str, slots: dict) -> bool:
    """A phrasing fits a row when the row has a value for every slot it uses."""
    return all(slots.get(name) is not None for name in _SLOT.findall(template))


def _render(template: str, slots: dict, mask: str | None = None) -> str:
    """Fill the slots, then write it as English: sentence capitals and capitalised names."""

    def value(match):
        name = match.group(1)
        word = MASK if name == mask else slots[name]
        if name == "region" and slots["region"] == "americas":
            return "the " + word
        return word

    text = _SLOT.sub(value, template)
    text = re.sub(
        r"[a-z]+", lambda m: m.group().capitalize() if m.group() in _PROPER else m.group(), text
    )
    text = text.replace(" ' s ", "'s ")  # "france ' s capital" -> "France's capital"
    # A capital letter at the start of every sentence ("[MASK]" stays as it is).
    return re.sub(r"(^|[.?!] )([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)


def _wrap(rng, template: str) -> str:
    """A statement (not a question) inside a random wrapper: "In fact, the capital of ..."."""
    statement = template[:-1] if template.endswith(".") else template
    if statement[:1].isupper():  # "The capital ..." -> "the capital ..."; "{capital} ..." stays
        statement = statement[0].lower() + statement[1:]
    return _pick(rng, WRAPPERS).format(s=statement)


def _words(text: str) -> list[str]:
    """The words BERT's basic tokenizer makes of ``text`` (lowercased, punctuation split)."""
    return [w if w == MASK else w.lower() for w in _WORD.findall(text)]


# --------------------------------------------------------------------------------------------
# Documents.
# --------------------------------------------------------------------------------------------


def _phrasings(table: str, split: str) -> list[str]:
    _, _, train, heldout, _ = _TABLES[table]
    return train if split == "train" else [t for _, t in heldout]


def _pick(rng, items):
    return items[int(rng.integers(len(items)))]


def _mixed_document(rng, split: str) -> list[str]:
    """Three to six sentences, each about a different entity (a country, animal or thing).

    Most documents are like this on purpose: an answer never appears twice in a document, so
    the model cannot fill a masked fact by copying it from the context; it must know it.
    """
    sentences = []
    used = set()
    for table in rng.choice(len(_TABLE_NAMES), int(rng.integers(3, 7)), p=_TABLE_WEIGHTS):
        table = _TABLE_NAMES[table]
        rows, slots_of, _, _, distractors = _TABLES[table]
        row = int(rng.integers(len(rows)))
        if (table, row) in used:
            continue
        used.add((table, row))
        slots = slots_of(rows[row])
        templates = [t for t in _phrasings(table, split) if _fits(t, slots)]
        if split == "train" and distractors and rng.random() < 0.15:
            templates = distractors  # harmless sentences that name the entity
        template = _pick(rng, templates)
        if split == "train" and "?" not in template and rng.random() < 0.25:
            template = _wrap(rng, template)
        sentences.append(_render(template, slots))
    return sentences


def _entity_document(rng, table: str) -> list[str]:
    """One entity: a training sentence that names it, then the other facts with pronouns.

    Every fact is stated once, and the entity is named once, for the reason given above.
    """
    rows, slots_of, train, _, _ = _TABLES[table]
    followups = COUNTRY_FOLLOWUPS if table == "country" else ANIMAL_FOLLOWUPS
    slots = slots_of(rows[rng.integers(len(rows))])
    opening = _pick(rng, [t for t in train if _fits(t, slots) and "?" not in t])
    sentences = [_render(opening, slots)]
    stated = {name for name in _SLOT.findall(opening)}
    for relation in rng.permutation(list(followups)):
        if relation not in stated and slots[relation] is not None:
            sentences.append(_render(_pick(rng, followups[relation]), slots))
    return sentences


def _scene_document(rng) -> list[str]:
    picks = rng.choice(len(SCENES), int(rng.integers(2, 5)), replace=False)
    return [SCENES[i] for i in picks]


# How often each table is drawn for a sentence: countries hold most facts.
_TABLE_NAMES = ("country", "animal", "thing")
_TABLE_WEIGHTS = np.array([0.55, 0.3, 0.15])


def generate_documents(n_docs: int, seed: int = 0, split: str = "train") -> list[str]:
    """``n_docs`` documents of a few sentences each, the same for the same ``seed``.

    ``split="train"`` writes facts only in training phrasings: 70% of documents mix sentences
    about different entities, 18% describe one country or animal (named once, then "it",
    "its", "there"), 12% are everyday scenes; 30% get a filler sentence. ``split="eval"``
    writes mixed documents in the held-out phrasings that ``fact_probes()`` asks about, plus
    scenes and fillers.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if int(n_docs) < 0:
        raise ValueError(f"n_docs must be >= 0, got {n_docs}")
    phrasing_split = "train" if split == "train" else "heldout"
    rng = np.random.Generator(np.random.PCG64(seed))
    documents = []
    for _ in range(int(n_docs)):
        kind = rng.random()
        if kind < 0.12:
            sentences = _scene_document(rng)
        elif kind < 0.30 and split == "train":
            sentences = _entity_document(rng, "country" if rng.random() < 0.65 else "animal")
        else:
            sentences = _mixed_document(rng, phrasing_split)
        if rng.random() < 0.3:
            sentences.insert(int(rng.integers(len(sentences) + 1)), _pick(rng, FILLERS))
        documents.append(" ".join(sentences))
    return documents


# --------------------------------------------------------------------------------------------
# Probes and scoring.
# --------------------------------------------------------------------------------------------


def fact_probes(split: str = "heldout") -> list[Probe]:
    """Every fact asked in every phrasing of ``split`` ("heldout" or "train"), one [MASK] each.

    Held-out probes measure knowledge (the model never read these sentences); training probes
    ask the same facts in sentences it did read, which measures memory. Training phrasings
    that hold several facts give one probe per fact they hold.
    """
    if split not in ("heldout", "train"):
        raise ValueError(f"split must be 'heldout' or 'train', got {split!r}")
    probes = []
    for rows, slots_of, train, heldout, _ in _TABLES.values():
        if split == "heldout":
            pairs = heldout
        else:  # every relation whose answer and subject a training phrasing both mention
            pairs = [
                (relation, t)
                for t in train
                for relation, (slot, about) in RELATIONS.items()
                if "{" + slot + "}" in t and "{" + about in t  # "{animal" also finds {animals}
            ]
        for relation, template in pairs:
            slot, about = RELATIONS[relation]
            for slots in map(slots_of, rows):
                if _fits(template, slots) and template.count("{" + slot + "}") == 1:
                    text = _render(template, slots, mask=slot)
                    probes.append(Probe(relation, slots[about], text, slots[slot]))
    return probes


def fact_accuracy(probes: list[Probe], predictions: list[str]) -> dict[str, float]:
    """Top-1 accuracy per relation: the share of probes whose predicted word is the answer.

    ``predictions[i]`` is the model's best token for ``probes[i]`` (compared lowercased).
    """
    if len(probes) != len(predictions):
        raise ValueError(f"got {len(predictions)} predictions for {len(probes)} probes")
    right: dict[str, int] = {}
    total: dict[str, int] = {}
    for probe, predicted in zip(probes, predictions, strict=True):
        total[probe.relation] = total.get(probe.relation, 0) + 1
        right[probe.relation] = right.get(probe.relation, 0) + (
            predicted.strip().lower() == probe.answer
        )
    return {relation: right[relation] / total[relation] for relation in total}


# --------------------------------------------------------------------------------------------
# The vocabulary.
# --------------------------------------------------------------------------------------------


def _every_sentence() -> list[str]:
    """Every sentence the generator can write, with every slot filled by every row."""
    sentences = list(SCENES) + list(FILLERS) + list(SEED_SENTENCES)
    sentences += [wrapper.format(s="") for wrapper in WRAPPERS]
    followups = [t for f in (COUNTRY_FOLLOWUPS, ANIMAL_FOLLOWUPS) for ts in f.values() for t in ts]
    for rows, slots_of, train, heldout, distractors in _TABLES.values():
        for template in train + [t for _, t in heldout] + distractors + followups:
            sentences += [_render(template, s) for s in map(slots_of, rows) if _fits(template, s)]
    return sentences


def vocabulary() -> list[str]:
    """tinyworld's WordPiece vocabulary: line i of vocab.txt is token id i.

    The 5 special tokens first ([PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4), then every word
    the generator can write (sorted), then punctuation, digits, letters and ``##`` letters so
    that any ASCII text a user types still tokenizes without [UNK].
    """
    words = sorted({w for s in _every_sentence() for w in _words(s)} - set(SPECIAL_TOKENS))
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    digits = [str(d) for d in range(10)]
    punctuation = [chr(c) for c in range(33, 127) if not chr(c).isalnum()]
    tokens = SPECIAL_TOKENS + words
    for token in punctuation + digits + letters + ["##" + c for c in letters + digits]:
        if token not in words:
            tokens.append(token)
    return tokens


def entities() -> dict[str, list[str]]:
    """Every entity word of the lexicon by kind; each one is a single vocabulary token."""
    return {
        "country": [r[0] for r in COUNTRIES],
        "capital": [r[1] for r in COUNTRIES],
        "region": sorted({r[2] for r in COUNTRIES}),
        "language": sorted({r[3] for r in COUNTRIES}),
        "animal": [r[0] for r in ANIMALS],
        "sound": [r[2] for r in ANIMALS if r[2]],
        "food": sorted({r[3] for r in ANIMALS}),
        "home": sorted({r[4] for r in ANIMALS if r[4]}),
        "color": sorted({r[2] for r in THINGS}),
        "scene": ["mat", "fox"],
    }
