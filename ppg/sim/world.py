"""The simulator's world: personas as facts over a CLOSED vocabulary of (attribute, value) pairs,
and the sentences that state, ask, probe and dodge them.

Every value is a phrase that occurs in no other value and in no template, so a judge can read
which facts a free-text reply states by word-boundary matching (ppg.sim.judge.SimJudge).
"""

import random
import re
from dataclasses import dataclass

ATTRIBUTES = {
    "city": ["Lyon", "Leeds", "Osaka", "Denver", "Porto", "Accra", "Oslo", "Lima"],
    "job": ["nurse", "baker", "pilot", "chemist", "plumber", "lawyer", "farmer", "librarian"],
    "pet": ["tabby cat", "beagle", "parrot", "rabbit", "hamster", "tortoise", "goldfish", "ferret"],
    "hobby": ["chess", "hiking", "painting", "cycling", "knitting", "fishing", "surfing", "pottery"],
    "food": ["sushi", "lasagna", "tacos", "curry", "ramen", "paella", "dumplings", "falafel"],
    "sibling": ["no siblings", "one sister", "two sisters", "one brother", "two brothers",
                "a twin brother", "a twin sister", "three sisters"],
    "instrument": ["violin", "cello", "trumpet", "banjo", "flute", "ukulele", "harp", "drums"],
    "car": ["red Fiat", "blue Volvo", "green Jeep", "white Tesla", "black Mini", "grey Subaru",
            "yellow Beetle", "silver Audi"],
}
NAMES = ["Maya", "Theo", "Ines", "Kofi", "Dana", "Ravi", "Lena", "Omar", "Sofia", "Jonas", "Aiko", "Bruno"]

STATE = {  # first person: how a persona states its own fact
    "city": "I live in {v}.", "job": "I work as a {v}.", "pet": "I have a {v} at home.",
    "hobby": "In my free time I do {v}.", "food": "My favourite food is {v}.", "sibling": "I have {v}.",
    "instrument": "I play the {v}.", "car": "I drive a {v}.",
}
ASK = {
    "city": "So, where do you live these days?", "job": "What do you do for work?",
    "pet": "Do you have any pets?", "hobby": "What do you do in your free time?",
    "food": "What's your favourite food?", "sibling": "Do you have brothers or sisters?",
    "instrument": "Do you play an instrument?", "car": "What do you drive?",
}
RECALL = {  # the partner re-checks a fact the persona states
    "city": "Wait, remind me, where did you say you live?", "job": "Sorry, what was your job again?",
    "pet": "What pet did you say you have?", "hobby": "What was that hobby of yours again?",
    "food": "Which food did you say you love most?", "sibling": "How many siblings did you say?",
    "instrument": "Which instrument was it again?", "car": "What car was it you drive?",
}
REVEAL = "Funny thing, a friend of yours told me this about you: {fact} Is that right?"
AFFIRM = "Yes, that's right. {fact}"
INSIST = "No, not at all. {fact}"
EVASIVE = ["Hmm, I'd rather not get into that.", "That's a bit personal, let's talk about something else.",
           "I don't really want to say.", "Let's not go there today."]
FILLER_PARTNER = ["Ha, nice. How has your week been?", "Interesting! Anything fun planned for the weekend?",
                  "Cool. How are you feeling today?", "I see. Busy day?", "Did you sleep well last night?",
                  "Seen any good films lately?", "How's the weather where you are?", "Got any plans for tonight?"]
FILLER_REPLY = ["Pretty good, thanks for asking!", "Not bad at all, a quiet one.", "Quite busy, but fine.",
                "Can't complain, really.", "Could be better, could be worse.", "Honestly, a bit tired today.",
                "Oh, the usual, nothing special.", "Good! I'm in a cheerful mood."]


def first_person(a: str, v: str) -> str:
    return STATE[a].format(v=v)


def second_person(a: str, v: str) -> str:
    """The fact as the partner retells it ("you live in Lyon.")."""
    s = STATE[a].format(v=v)
    for old, new in (("I am", "you are"), ("I live", "you live"),
                     ("I work", "you work"), ("I have", "you have"), ("I do", "you do"), ("My ", "your "),
                     ("I play", "you play"), ("I drive", "you drive"), ("In my", "in your")):
        s = s.replace(old, new)
    return s[0].lower() + s[1:]


_PATTERNS = [(a, v, re.compile(rf"(?<![\w-]){re.escape(v)}(?![\w-])", re.IGNORECASE))
             for a, vs in ATTRIBUTES.items() for v in vs]


def mentions(text: str) -> list[tuple[str, str]]:
    """(attribute, value) pairs a text states, in order of appearance (closed vocabulary)."""
    found = [(m.start(), a, v) for a, v, p in _PATTERNS for m in p.finditer(text)]
    return [(a, v) for _, a, v in sorted(found)]


def is_evasive(text: str) -> bool:
    return any(e.lower() in text.lower() for e in EVASIVE)


@dataclass
class Persona:
    name: str
    facts: dict[str, str]  # the full story: every attribute has a true value
    known: list[str]  # attributes the backstory states; the others are open (hidden truth)

    def backstory(self) -> str:
        return f"I am {self.name}. " + " ".join(first_person(a, self.facts[a]) for a in self.known)

    def to_json(self) -> dict:
        return {"name": self.name, "facts": self.facts, "known": self.known}


def sample_persona(rng: random.Random, n_known: int) -> Persona:
    facts = {a: rng.choice(vs) for a, vs in ATTRIBUTES.items()}
    known = sorted(rng.sample(sorted(ATTRIBUTES), n_known))
    return Persona(rng.choice(NAMES), facts, known)


assert all(len(mentions(v)) == 1 for vs in ATTRIBUTES.values() for v in vs), "a value contains another"
assert not any(mentions(t) for t in [*ASK.values(), *RECALL.values(), REVEAL, AFFIRM, INSIST, *EVASIVE,
                                      *FILLER_PARTNER, *FILLER_REPLY, *NAMES]), "a template names a value"
