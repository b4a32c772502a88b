"""Writes the example therapy sessions of the real-persona recipe (params.real.yaml):
therapy.jsonl (the logs the policy trains on) and grader.jsonl (sessions of OTHER patients, for
the reward model that grades the rollouts). Written for this project, not taken from any corpus.

Each patient has a backstory of five facts; a session is five questions of the therapist, each
answered by the patient. One answer in four contradicts the backstory (another patient's job,
city, support or age, or a denial of why they came), and its logged verdict says so: reward 0,
else 1, as a judge's per-turn verdict would. Deterministic: `python data/examples/make_therapy.py`
rewrites the same files.
"""

import json
import random
from pathlib import Path

NAMES = ["Maya", "Tom", "Aisha", "Jonas", "Priya", "Lucas", "Mei", "Omar", "Sofia", "Daniel", "Hana", "Kofi",
         "Elena", "Ravi", "Greta", "Mateo", "Yara", "Felix", "Nadia", "Samuel", "Ines", "Arjun", "Lena", "Tariq",
         "Clara", "Hugo", "Amara", "Noah", "Zoe", "Ibrahim", "Freya", "Diego", "Leila", "Oscar", "Rosa", "Emil",
         "Chloe", "Kenji", "Alma", "Victor", "Nora", "Bilal", "Ada", "Marco", "Selin", "Theo", "Ruth", "Pablo",
         "Iris", "Jamal", "Vera", "Luca", "Esme", "Malik", "June", "Karim", "Mira", "Anton", "Lina", "Rafael",
         "Tess", "Yusuf", "Kira", "Bruno", "Alba", "Idris", "Nell", "Sven", "Dalia", "Ezra", "Maren", "Olu",
         "Petra", "Quentin", "Rhea", "Soren", "Talia", "Umar", "Vita", "Wren", "Xavi", "Yasmin", "Zane", "Bea",
         "Cyril", "Dina", "Eli", "Fatima", "Gus", "Hedda"]
JOBS = ["night-shift nurse", "primary school teacher", "bus driver", "software tester", "bakery owner",
        "warehouse picker", "junior lawyer", "hotel receptionist", "electrician", "graduate student",
        "care worker", "chef in a busy restaurant"]
CITIES = ["Leeds", "Porto", "Lyon", "Glasgow", "Valencia", "Bremen", "Cork", "Turin", "Malmo", "Gdansk"]
WORRIES = [("my sleep has fallen apart", "I lie awake until four most nights"),
           ("I keep fighting with my partner", "we argued again about the smallest thing"),
           ("money is tight since my hours were cut", "I checked my bank balance three times today"),
           ("I feel lonely since I moved", "I ate dinner alone every night this week"),
           ("I panic before meetings at work", "my heart raced before the Monday meeting"),
           ("my father is ill and I am his carer", "I drove to his place twice this week")]
SUPPORT = ["my older sister", "my best friend from school", "my grandmother", "my partner", "a neighbour",
           "my brother"]


def patients(names: list[str], seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"name": n, "age": rng.randint(22, 64), "job": rng.choice(JOBS), "city": rng.choice(CITIES),
             "worry": rng.choice(WORRIES), "support": rng.choice(SUPPORT)} for n in names]


def backstory(p: dict) -> str:
    return (f"I am {p['name']}, {p['age']}, a {p['job']} living in {p['city']}. I started therapy because "
            f"{p['worry'][0]}. The person I trust most is {p['support']}.")


def other(rng, options, mine):
    return rng.choice([x for x in options if x != mine])


def answer(p: dict, fact: str, rng, contradict: bool) -> str:
    if fact == "job":
        job = other(rng, JOBS, p["job"]) if contradict else p["job"]
        return rng.choice([f"Work is heavy; being a {job} takes everything I have.",
                           f"As a {job} I rarely get a quiet day."])
    if fact == "city":
        city = other(rng, CITIES, p["city"]) if contradict else p["city"]
        return rng.choice([f"Here in {city} the winters get to me.",
                           f"I walk around {city} after work to clear my head."])
    if fact == "worry":
        if contradict:
            return rng.choice(["Honestly, nothing is bothering me; life has never been easier.",
                               "I only came because a friend booked it; I have no problems."])
        return rng.choice([f"Mostly that {p['worry'][0]}.", f"It is the same thing: {p['worry'][1]}."])
    if fact == "support":
        who = other(rng, SUPPORT, p["support"]) if contradict else p["support"]
        return rng.choice([f"I call {who} when it gets bad.", f"Only {who} really knows how I feel."])
    age = p["age"] + rng.choice([-15, 12, 20]) if contradict else p["age"]
    return rng.choice([f"At {age} I thought I would have this figured out.", f"I am {age} and still feel stuck."])


QUESTIONS = {"job": ["How is work treating you?", "What does a normal workday look like?"],
             "city": ["How do you find the place you live?", "What do you do in the evenings around town?"],
             "worry": ["What has been on your mind this week?", "What brought you here today?"],
             "support": ["Who do you turn to when things get hard?", "Who in your life do you talk to?"],
             "age": ["How do you feel about where you are in life?", "Do you think about your age much?"]}


def sessions(people: list[dict], per_patient: int, seed: int, prefix: str) -> list[dict]:
    rng, out = random.Random(seed), []
    for i, p in enumerate(people):
        for s in range(per_patient):
            lines = []
            for fact in rng.sample(list(QUESTIONS), len(QUESTIONS)):
                bad = rng.random() < 0.25
                lines += [{"speaker": "therapist", "text": f"{p['name']}, {rng.choice(QUESTIONS[fact]).lower()}"},
                          {"speaker": "patient", "text": answer(p, fact, rng, bad), "reward": 0.0 if bad else 1.0}]
            out.append({"dialogue_id": f"{prefix}-{i:03d}-{s}", "domain": "therapy", "source": "handwritten-example",
                        "personas": {"patient": backstory(p), "therapist": "A counsellor in weekly sessions."},
                        "evaluated_speakers": ["patient"], "lines": lines})
    return out


def write(path: Path, dialogues: list[dict]) -> None:
    path.write_text("".join(json.dumps(d) + "\n" for d in dialogues))


if __name__ == "__main__":
    here = Path(__file__).parent
    write(here / "therapy.jsonl", sessions(patients(NAMES[:60], 1), 2, 2, "ex"))
    write(here / "grader.jsonl", sessions(patients(NAMES[60:], 3), 4, 4, "gr"))  # 30 other patients
