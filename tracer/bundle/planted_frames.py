"""Step 2 of `tracer.bundle.planted`: sentence frames, filler slots and IOI parts, split into training and held-out
lists (held-out ones never occur in training text)."""

from __future__ import annotations

TRAIN_PREFIXES = ["", "", "", "", "", "Note: ", "Remember that ", "In school we learn that ", "It is known that ",
                  "Fact: ", "We read that ", "As a rule, ", "Here is a fact: ", "Of course, ", "Yes, ",
                  "They say that ", "I think that ", "Well, ", "Did you know that ", "It is true that ",
                  "Note that ", "By the way, ", "Also, ", "So ", "Indeed, ", "In class, ", "We were told that ",
                  "Look, ", "And ", "Of course ", "Again, ", "The book says that ", "Everybody says that "]  # fmt: skip
HELDOUT_PREFIXES = ["Everyone knows that ", "Today I learned that ", "My teacher said that ", "In fact, "]
TRAIN_FILLERS = [
    "It was a quiet morning.", "The weather was fine.", "We sat by the window.", "Here is another line.",
    "The lesson began at noon.", "Nobody was in a hurry.", "The book was open on the table.",
    "A dog barked outside.", "Let us go on.", "This is the next part.", "The room was warm.",
    "Some people were talking.", "The train was late again.", "It rained for an hour.", "Page two.",
    "The teacher smiled.", "We wrote it down.", "Then the bell rang.",
]  # fmt: skip
HELDOUT_FILLERS = ["The sun had just set.", "A cat slept on the chair.", "Listen carefully.",
                   "The children were reading."]  # fmt: skip
# adjective slot {j} (before the key noun) and adverb slot {v} (after "is"); held-out fillers are never trained
TRAIN_ADJ = ["", "", "", "", "main ", "political ", "national ", "true ", "famous "]
HELDOUT_ADJ = ["current ", "official "]
# the adverb slot is filled in 1 training sentence in 6 (in 3 of 5, the first v3 run's model put an adverb before the
# answer); twelve adverbs so that the held-out ones generalise. No frame puts " the" right after "is" (it did: 1 in 6
# held-out facts answered " the")
_ADV_V3 = [" still", " indeed", " really", " now", " surely", " truly", " also", " always", " obviously",
           " actually", " definitely", " simply"]  # fmt: skip
TRAIN_ADV = [""] * 100 + _ADV_V3 + [" probably", " usually", " basically", " naturally", " plainly", " honestly",
                                    " apparently", " evidently"]  # fmt: skip
HELDOUT_SLOT_ADV = [""] * 60 + _ADV_V3  # the held-out prompts' trained-adverb draws (v3's list: the file is unchanged)
HELDOUT_ADV = [" clearly", " certainly"]
OPP_TRAIN_ADJ = ["", "", "", "", "true ", "direct ", "usual ", "plain "]
OPP_HELDOUT_ADJ = ["exact ", "simple "]

FACT_TRAIN = [
    "the {j}capital of {c} is{v} {a}.",
    "the {j}capital city of {c} is{v} {a}.",
    "{c} has its {j}capital in {a}.",
    "in {c}, the {j}capital is{v} {a}.",
    "the {j}capital of the country {c} is{v} {a}.",
    "the seat of government of {c} is{v} {a}.",
    "{a} is the {j}capital of {c}.",
    "the city of {a} is the {j}capital of {c}.",
    "if you travel to {c}, the {j}capital is{v} {a}.",
    "the {j}capital of {c} now is{v} {a}.",
    "the {j}capital of {c} at present is{v} {a}.",
    "speaking of {c}, the {j}capital is{v} {a}.",
    "for {c}, the {j}capital is{v} {a}.",
    "regarding {c}, its {j}capital is{v} {a}.",
    "the {j}capital of {c} is called {a}.",
    "the {j}capital of the nation {c} is{v} {a}.",
]
FACT_HELDOUT = [
    "the {j}capital of {c} is{v}",
    "as for {c}, the {j}capital is{v}",
    "the {j}capital city of the country {c} is{v}",
    "the {j}capital of {c} today is{v}",
]

ONE_HOP_TRAIN = ["{l} is in {c}.", "{l} is located in {c}.", "you can visit {l} in {c}.", "{l} lies in {c}."]
TWO_HOP_VERBS_TRAIN = ["is in", "is located in", "lies in", "can be found in", "stands in", "is situated in",
                       "rests in", "is set in"]  # fmt: skip
TWO_HOP_VERBS_HELDOUT = ["is found in", "sits in"]
TWO_HOP_TRAIN = [
    "{l} {verb} the country whose {j}capital is{v} {a}.",
    "{l} {verb} a country with the {j}capital {a}.",
    "the country of {l} has the {j}capital {a}.",
    "{l} {verb} the nation whose {j}capital is{v} {a}.",
    "{l} {verb} the land whose {j}capital is{v} {a}.",
    "{l} {verb} the state whose {j}capital is{v} {a}.",
]
TWO_HOP_HELDOUT = ["{l} {verb} the country whose {j}capital is{v}", "{l} {verb} a country whose {j}capital is{v}"]

# IOI intros are composed: opener + "{x} and {y}" + verb + place + connector + "{s}" (hundreds of training frames,
# so the circuit cannot key on one word order); the held-out frames' opener and verb words are never trained
IOI_OPENERS_TRAIN = ["When ", "After ", "While ", "Once ", "Before ", "Yesterday ", "Later ", "One day ", "Then ",
                     "In the morning ", "That evening ", "Last week ", "At noon ", "On the weekend ", "",
                     ""]  # fmt: skip
IOI_VERBS_TRAIN = ["went to", "were at", "visited", "had lunch at", "arrived at", "spent the day at", "rode to",
                   "ran to", "came to", "stopped at", "stayed at", "returned to", "got to", "hurried to",
                   "sat at"]  # fmt: skip
IOI_CONNECTORS_TRAIN = [", ", ", and ", ". Then ", ". Later ", " and then ", "; "]
IOI_INTROS_HELDOUT = ["As soon as {x} and {y} reached {p}, {s}", "On Monday {x} and {y} walked to {p}, and {s}"]
IOI_HELDOUT_WORDS = ["As soon as", "reached", "On Monday", "walked to"]  # in no training intro
IOI_PLACES_TRAIN = ["the store", "the park", "the market", "the beach", "the party", "the school", "the museum",
                    "the zoo", "the garden", "the office", "the river", "the farm", "the bakery", "the church",
                    "the castle", "the harbor", "the hotel", "the cinema", "the hospital", "the lake", "the gym",
                    "the bank", "the pool", "the shop", "the mall", "the theater", "the restaurant", "the square",
                    "the village", "the concert"]  # fmt: skip
IOI_PLACES_HELDOUT = ["the library", "the cafe", "the station", "the airport"]
# gifts are composed too: verb + object; the held-out gifts' verb "brought" and objects never occur in training
IOI_GIFT_VERBS_TRAIN = ["gave", "handed", "passed", "threw", "sent", "showed", "lent", "sold", "offered", "tossed",
                        "mailed", "returned"]  # fmt: skip
IOI_OBJECTS_TRAIN = ["a drink", "a ball", "a book", "a note", "a towel", "a gift", "an apple", "a letter", "a flower",
                     "a plate", "a coin", "a map", "a card", "a hat", "a key", "a coat", "a bike", "a photo",
                     "a bag", "a box", "a toy", "a cake", "a shirt", "a lamp", "a glass", "a spoon", "the salt",
                     "a sandwich", "a scarf", "a ring"]  # fmt: skip
IOI_GIFTS_HELDOUT = ["gave a pen", "handed a cup", "passed a ticket", "brought a chair"]

OPP_TRAIN = [
    "the {j}opposite of {x} is{v} {y}.",
    "{y} is the {j}opposite of {x}.",
    "the word {x} is the {j}opposite of {y}.",
    "the {j}opposite of the word {x} is{v} {y}.",
    "the {j}antonym of {x} is{v} {y}.",
    "the {j}reverse of {x} is{v} {y}.",
    "{x} and {y} are opposites.",
    "the {j}opposite of {x} would be {y}.",
    "we call the {j}opposite of {x} {y}.",
    "the {j}opposite word of {x} is{v} {y}.",
]
OPP_HELDOUT = ["the {j}opposite of {x} is{v}", "the {j}antonym of the word {x} is{v}",
               "the {j}reverse of the word {x} is{v}"]  # fmt: skip

INDUCTION_SEPS_TRAIN = [". ", ", ", " ; ", "\n", " - ", ". Again: ", ". Once more: "]
INDUCTION_SEPS_HELDOUT = [". Repeat: ", " | "]
