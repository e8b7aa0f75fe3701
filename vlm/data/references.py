"""Reference tables of the official VQA v2 evaluation (Antol et al. 2015; Goyal et al. 2017).

The answer normalisation of ``vqaEval.py`` in github.com/GT-Vision-Lab/VQA (master, commit a013f00) uses four
tables: a punctuation list, a number-word map, an article list and a contractions table. They are data the metric is
defined by, so they are reproduced here entry for entry (including the entries that can never fire, noted below), in
this module's own layout; the code that applies them is :func:`vlm.data.vqa.normalize_answer` (and the metric,
:func:`downstream.vqa.vqa_accuracy`).
"""

from __future__ import annotations

__all__ = ["ARTICLES", "CONTRACTIONS", "NUMBER_WORDS", "PUNCTUATION"]

#: Characters the official ``processPunctuation`` deletes or turns into a space, in the order it visits them (the
#: order matters only for speed: each character is replaced independently). The apostrophe, colon and period are not
#: in the list: apostrophes are kept (``don't``), colons survive, periods have their own rule.
PUNCTUATION: tuple[str, ...] = tuple(";/[]\"{}()=+\\_-><@`,?!")

#: Number words mapped to digits, one whole word at a time (``"none"`` counts as zero).
NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}

#: Words dropped from an answer.
ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# The contractions table as ``written-form canonical-form`` pairs, whitespace separated. Lookups happen after the
# answer is lower-cased, so the four keys with a capital I (``Id've``, ``I'dve``, ``Im``, ``Ive``) never match; the
# official table also maps ``somebody'd`` to ``somebodyd`` (the reverse of its neighbours). Both quirks are kept so that
# scores agree with the official tool.
_CONTRACTION_PAIRS = """
aint ain't              arent aren't            cant can't              couldve could've
couldnt couldn't        couldn'tve couldn't've  couldnt've couldn't've  didnt didn't
doesnt doesn't          dont don't              hadnt hadn't            hadnt've hadn't've
hadn'tve hadn't've      hasnt hasn't            havent haven't          hed he'd
hed've he'd've          he'dve he'd've          hes he's                howd how'd
howll how'll            hows how's              Id've I'd've            I'dve I'd've
Im I'm                  Ive I've                isnt isn't              itd it'd
itd've it'd've          it'dve it'd've          itll it'll              let's let's
maam ma'am              mightnt mightn't        mightnt've mightn't've  mightn'tve mightn't've
mightve might've        mustnt mustn't          mustve must've          neednt needn't
notve not've            oclock o'clock          oughtnt oughtn't        ow's'at 'ow's'at
'ows'at 'ow's'at        'ow'sat 'ow's'at        shant shan't            shed've she'd've
she'dve she'd've        she's she's             shouldve should've      shouldnt shouldn't
shouldnt've shouldn't've                        shouldn'tve shouldn't've
somebody'd somebodyd    somebodyd've somebody'd've                      somebody'dve somebody'd've
somebodyll somebody'll  somebodys somebody's    someoned someone'd      someoned've someone'd've
someone'dve someone'd've                        someonell someone'll    someones someone's
somethingd something'd  somethingd've something'd've                    something'dve something'd've
somethingll something'll                        thats that's            thered there'd
thered've there'd've    there'dve there'd've    therere there're        theres there's
theyd they'd            theyd've they'd've      they'dve they'd've      theyll they'll
theyre they're          theyve they've          twas 'twas              wasnt wasn't
wed've we'd've          we'dve we'd've          weve we've              werent weren't
whatll what'll          whatre what're          whats what's            whatve what've
whens when's            whered where'd          wheres where's          whereve where've
whod who'd              whod've who'd've        who'dve who'd've        wholl who'll
whos who's              whove who've            whyll why'll            whyre why're
whys why's              wont won't              wouldve would've        wouldnt wouldn't
wouldnt've wouldn't've  wouldn'tve wouldn't've  yall y'all              yall'll y'all'll
y'allll y'all'll        yall'd've y'all'd've    y'alld've y'all'd've    y'all'dve y'all'd've
youd you'd              youd've you'd've        you'dve you'd've        youll you'll
youre you're            youve you've
"""


def _pairs(text: str) -> dict[str, str]:
    words = text.split()
    if len(words) % 2:
        raise AssertionError("contractions table: odd number of words")
    return dict(zip(words[0::2], words[1::2]))


#: Word-level contraction repairs applied after lower-casing (``"dont"`` → ``"don't"``, ``"isnt"`` → ``"isn't"``).
CONTRACTIONS: dict[str, str] = _pairs(_CONTRACTION_PAIRS)
