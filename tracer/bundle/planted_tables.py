"""Step 1 of `tracer.bundle.planted`: the tables the planted tasks draw from (countries and capitals, landmarks,
first names, opposite pairs, induction words)."""

from __future__ import annotations

from collections.abc import Iterable


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
