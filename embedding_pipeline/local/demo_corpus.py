"""Demo text written by the project: English and Polish, ten topics, deterministic from a seed.

Each topic has sentence templates per language whose ``{a}``/``{b}``/``{c}`` slots draw from
small vocabularies (Polish fillers are already in the case their templates need), so rows
read like real notes and chat messages, differ from each other, and carry a known topic that
evaluation queries (phrased differently, in both languages) can be judged against.
Nothing here touches the database; ``demo_data`` turns these rows into tables.
"""

from __future__ import annotations

import hashlib
import random
import re
from datetime import datetime, timedelta, timezone

LANGS = ("en", "pl")
# nanoid's URL-safe alphabet: 64 symbols, so one byte & 63 picks one without bias.
NANOID_ALPHABET = "useandom-26T198340PX75pxJACKVERYMINDBUSHWOLF_GQZbfghjklqvwyzrict"
NANOID_SIZE = 21
WORKSPACES = ("demo", "acme-support", "ogrody-lublin")
PEERS = ("alice", "bob", "kasia", "łukasz", "zofia", "marek", "priya", "jan")
EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)
WHITESPACE_ONLY = " \n\t  "

# topic -> emoji (space-separated), then per language: templates ("t"), slot vocabularies, queries ("q").
CORPUS: dict[str, dict] = {
    "cooking": {"emoji": "🍲 🍝 🥟", "en": {
        "t": ["I made {a} {b} last weekend and it turned out surprisingly well.", "The trick with {a} is cooking {c}.",
              "My grandmother always served {a} {b}.", "If you are short on time, prepare {a} the day before and reheat {c}.",
              "Does anyone else think {a} tastes better {b}?", "For a weeknight dinner, {a} {b} is hard to beat.",
              "Season {a} at the very end, otherwise it is easy to oversalt.", "Let {a} rest for ten minutes before serving; the texture improves a lot."],
        "a": "tomato soup|mushroom risotto|beef stew|dumplings|roast chicken|lentil curry|sourdough bread|apple pie|vegetable stir-fry|pancakes",
        "b": "with fresh dill|with a knob of butter|with roasted garlic|with a squeeze of lemon|with smoked paprika|with plenty of black pepper|with caramelised onions",
        "c": "on a low heat|slowly for about forty minutes|in a cast-iron pan|in a hot oven|covered with a lid|without stirring too often|in small batches",
        "q": ["how do I keep a stew from getting too salty", "easy dinner ideas for busy weekdays", "what goes well with homemade dumplings",
              "slow cooking tips for soups", "best way to reheat leftovers"]}, "pl": {
        "t": ["W zeszły weekend zrobiłam {a} {b} i wyszło zaskakująco dobrze.", "Cały sekret polega na tym, żeby przygotować {a} {c}.",
              "Babcia zawsze podawała {a} {b}.", "Jeśli brakuje ci czasu, przygotuj {a} dzień wcześniej i podgrzej {c}.",
              "Czy ktoś jeszcze uważa, że najlepiej jeść {a} {b}?", "Na szybki obiad w tygodniu polecam {a} {b}.",
              "Dopraw {a} dopiero na samym końcu, inaczej łatwo przesolić.", "Zanim podasz {a}, odczekaj dziesięć minut – konsystencja będzie dużo lepsza."],
        "a": "zupę pomidorową|risotto z grzybami|gulasz wołowy|pierogi ruskie|pieczonego kurczaka|curry z soczewicy|chleb na zakwasie|szarlotkę|bigos|naleśniki",
        "b": "ze świeżym koperkiem|z kawałkiem masła|z pieczonym czosnkiem|z odrobiną soku z cytryny|z wędzoną papryką|z dużą ilością pieprzu|z karmelizowaną cebulą",
        "c": "na małym ogniu|powoli przez około czterdzieści minut|na żeliwnej patelni|w mocno nagrzanym piekarniku|pod przykryciem|bez ciągłego mieszania|w małych porcjach",
        "q": ["jak nie przesolić potrawy", "pomysł na szybki obiad po pracy", "z czym podawać domowe pierogi",
              "porady dotyczące wolnego gotowania zup", "jak odgrzać jedzenie z poprzedniego dnia"]}},
    "travel": {"emoji": "✈️ 🧳 🏔️", "en": {
        "t": ["We travelled to {a} {b} and it was absolutely worth it.", "The best time to visit {a} is {c}, when the crowds are gone.",
              "Book accommodation in {a} at least two months ahead if you go {c}.", "Getting to {a} {b} took longer than expected, so plan a buffer day.",
              "Our itinerary for {a} included a free walking tour and a day trip to the countryside.", "Check whether your travel insurance covers hiking near {a}.",
              "I would go back to {a} {c} without thinking twice.", "Local markets in {a} are the cheapest place to try regional food."],
        "a": "Kraków|Lisbon|the Tatra mountains|Gdańsk|the Norwegian fjords|Rome|the Masurian lakes|Barcelona|Vienna|the Baltic coast",
        "b": "by night train|on a budget airline|by car with friends|on a guided tour|by bike|with a backpack and a tent|on a last-minute deal",
        "c": "in early spring|in the off-season|during a long weekend|in late September|over the Christmas holidays|in the middle of summer",
        "q": ["cheap ways to get around Europe", "when to visit popular cities without crowds", "planning a weekend trip abroad",
              "how early should I book a hotel", "train or plane for a holiday"]}, "pl": {
        "t": ["Pojechaliśmy {a} {b} i naprawdę było warto.", "Najlepiej wybrać się {a} {c}, kiedy nie ma już tłumów.",
              "Jeśli planujesz wyjazd {a} {c}, zarezerwuj nocleg co najmniej dwa miesiące wcześniej.",
              "Podróż {a} {b} trwała dłużej, niż się spodziewaliśmy, więc zaplanuj dzień zapasu.", "Wróciłabym {a} {c} bez chwili wahania.",
              "Przed wyjazdem {a} sprawdź, czy ubezpieczenie obejmuje wędrówki górskie.",
              "Na wyjeździe {a} najtaniej jest próbować regionalnego jedzenia na lokalnych targach.",
              "W planie wycieczki {a} był darmowy spacer z przewodnikiem i jednodniowy wypad za miasto."],
        "a": "do Krakowa|do Lizbony|w Tatry|do Gdańska|nad norweskie fiordy|do Rzymu|na Mazury|do Barcelony|do Wiednia|nad Bałtyk",
        "b": "nocnym pociągiem|tanimi liniami lotniczymi|samochodem ze znajomymi|z biurem podróży|na rowerach|z plecakiem i namiotem",
        "c": "wczesną wiosną|poza sezonem|na długi weekend|pod koniec września|w okresie świątecznym|w samym środku lata",
        "q": ["tanie sposoby podróżowania po Europie", "kiedy zwiedzać miasta bez tłumów turystów", "plan wyjazdu na weekend za granicę",
              "z jakim wyprzedzeniem rezerwować hotel", "pociąg czy samolot na urlop"]}},
    "software_ops": {"emoji": "🚨 🔥 🛠️", "en": {
        "t": ["{a} started failing health checks {b}.", "We had to {c} because {a} was timing out {b}.",
              "Before touching {a}, please {c} and tell the on-call engineer.", "Latency on {a} doubled {b}; the dashboards show it clearly.",
              "The runbook says to {c} whenever {a} misbehaves.", "I suggest we {c} and keep an eye on {a} for the next hour.",
              "Disk usage on {a} keeps growing, so someone should {c} this week.", "Nobody noticed that {a} was degraded {b} until customers complained."],
        "a": "the Kubernetes cluster|the Postgres primary|the CI pipeline|the load balancer|the staging environment|the message queue|"
             "the nightly backup job|the API gateway|the Redis cache|the logging stack",
        "b": "after the last deploy|during the traffic spike|since the certificate rotation|after upgrading the kernel|once the disk filled up|right after the config change",
        "c": "roll back the release|increase the connection pool|add an alert on p99 latency|rotate the credentials|scale out to three replicas|"
             "write a short postmortem|pin the dependency versions",
        "q": ["service outage after a deployment", "database connections exhausted", "how to respond to high latency alerts",
              "steps for rolling back a bad release", "monitoring and incident postmortem"]}, "pl": {
        "t": ["Od rana mamy problemy {a} – zaczęło się {b}.", "Musieliśmy {c}, bo coś było nie tak {a} {b}.",
              "Przed każdą zmianą związaną {a} trzeba {c} i uprzedzić osobę na dyżurze.", "Problem {a}: opóźnienia wzrosły dwukrotnie {b}.",
              "Zgodnie z runbookiem w razie kłopotów {a} należy {c}.", "Proponuję {c} i przez najbliższą godzinę obserwować, co się dzieje {a}.",
              "Nikt nie zauważył, że {b} coś się dzieje {a}, dopóki nie napisali klienci.", "W tym tygodniu ktoś powinien {c}, bo sytuacja {a} się pogarsza."],
        "a": "z klastrem Kubernetesa|z główną bazą Postgres|z pipeline'em CI|z load balancerem|ze środowiskiem stagingowym|z kolejką wiadomości|"
             "z nocnym zadaniem backupu|z bramką API|z cache'em Redis|ze stosem logowania",
        "b": "po ostatnim wdrożeniu|w trakcie skoku ruchu|od czasu rotacji certyfikatów|po aktualizacji jądra|odkąd zapełnił się dysk|zaraz po zmianie konfiguracji",
        "c": "wycofać ostatni release|zwiększyć pulę połączeń|dodać alert na opóźnienie p99|zrotować dane dostępowe|przeskalować usługę do trzech replik|"
             "napisać krótki postmortem|przypiąć wersje zależności",
        "q": ["awaria usługi po wdrożeniu", "brak wolnych połączeń do bazy danych", "co robić przy alercie o dużym opóźnieniu",
              "jak wycofać wadliwą wersję aplikacji", "monitoring i analiza incydentu"]}},
    "finance": {"emoji": "💰 📈 🧾", "en": {
        "t": ["I review {a} {b}, because {c}.", "Paying into {a} {b} is boring but it works.", "Our advisor suggested looking at {a} first, since {c}.",
              "Keep a spreadsheet for {a}; {c}, and numbers make that visible.", "We finally sorted out {a} and it feels like a weight off our shoulders.",
              "Is it smarter to focus on {a} or on {a} right now?", "Do not ignore the fact that {c}.", "A simple rule: set money aside for {a} {b}."],
        "a": "an emergency fund|index funds|the mortgage|a monthly budget|retirement savings|credit card debt|government bonds|a savings account|the household bills|a side business",
        "b": "every month|at the start of each quarter|before the end of the tax year|as soon as the salary arrives|once a year",
        "c": "inflation eats into returns|interest rates went up again|fees add up over time|the exchange rate keeps changing|unexpected expenses always come up",
        "q": ["how much should I save each month", "paying off debt versus investing", "protecting savings from inflation",
              "tracking household spending", "is a fixed rate mortgage better"]}, "pl": {
        "t": ["Przeglądam {a} {b}, bo {c}.", "Odkładanie pieniędzy {b} jest nudne, ale działa – szczególnie gdy chodzi o {a}.",
              "Doradca zasugerował, żeby najpierw przeanalizować {a}, ponieważ {c}.", "Prowadzę arkusz kalkulacyjny na {a}; {c}, a liczby to pokazują.",
              "Wreszcie uporządkowaliśmy {a} i spadł nam kamień z serca.", "Czy teraz lepiej spłacać kredyt, czy inwestować w {a}?",
              "Nie ignoruj tego, że {c}.", "Prosta zasada: {b} odkładaj pieniądze na {a}."],
        "a": "fundusz awaryjny|fundusze indeksowe|kredyt hipoteczny|miesięczny budżet|oszczędności emerytalne|zadłużenie na karcie kredytowej|"
             "obligacje skarbowe|konto oszczędnościowe|domowe rachunki|dodatkową działalność",
        "b": "co miesiąc|na początku każdego kwartału|przed końcem roku podatkowego|zaraz po wypłacie|raz w roku",
        "c": "inflacja zjada zyski|stopy procentowe znowu wzrosły|opłaty sumują się z czasem|kurs walut ciągle się zmienia|zawsze pojawiają się nieprzewidziane wydatki",
        "q": ["ile oszczędzać co miesiąc", "spłacać długi czy inwestować", "jak chronić oszczędności przed inflacją",
              "kontrola wydatków domowych", "czy kredyt ze stałą stopą jest lepszy"]}},
    "health": {"emoji": "🩺 💤 🥗", "en": {
        "t": ["Since I added {a} to my routine, {b} improved {c}.", "My doctor recommended {a} to help with {b}.",
              "No supplement helped {b} as much as {a}.", "If you struggle with {b}, try {a} for a month and note how you feel.",
              "It is worth talking to a GP when {b} gets worse {c}.", "Small habits like {a} are easier to keep than strict diets.",
              "I track {b} in a notebook; the pattern became clear {c}.", "Nobody told me that {a} could affect {b} so much."],
        "a": "a short walk after lunch|eight hours of sleep|drinking more water|stretching in the morning|cutting down on sugar|a yearly blood test|"
             "breathing exercises|less screen time before bed|regular check-ups with the dentist",
        "b": "my back pain|my energy level|my blood pressure|my sleep quality|my mood|the frequent headaches",
        "c": "within a few weeks|after about a month|almost immediately|over the winter|gradually",
        "q": ["natural ways to sleep better", "reducing back pain at a desk job", "daily habits that boost energy",
              "when should I see a doctor about headaches", "lowering blood pressure without medication"]}, "pl": {
        "t": ["Odkąd wprowadziłam {a}, widzę poprawę {c}, jeśli chodzi o {b}.", "Lekarka zaleciła {a}; to ma pomóc, jeśli chodzi o {b}.",
              "Żaden suplement nie pomógł mi tak jak {a}.", "Jeśli martwi cię {b}, wypróbuj przez miesiąc {a} i zapisuj, jak się czujesz.",
              "Warto porozmawiać z lekarzem rodzinnym, gdy {b} pogarsza się {c}.", "Małe nawyki, takie jak {a}, łatwiej utrzymać niż restrykcyjną dietę.",
              "Zapisuję w notesie {b}, a zależność stała się jasna {c}.", "Nikt mi nie powiedział, że {a} może tak mocno wpływać na {b}."],
        "a": "krótki spacer po obiedzie|osiem godzin snu|picie większej ilości wody|poranne rozciąganie|ograniczenie cukru|coroczne badanie krwi|"
             "ćwiczenia oddechowe|mniej czasu przed ekranem przed snem|regularne wizyty u dentysty",
        "b": "ból pleców|poziom energii|ciśnienie krwi|jakość snu|samopoczucie|częsty ból głowy",
        "c": "już po kilku tygodniach|mniej więcej po miesiącu|niemal od razu|w ciągu zimy|stopniowo",
        "q": ["jak lepiej spać bez leków", "ból kręgosłupa przy pracy biurowej", "codzienne nawyki na więcej energii",
              "kiedy iść do lekarza z bólem głowy", "jak obniżyć ciśnienie bez tabletek"]}},
    "sport": {"emoji": "⚽ 🏃 🚴", "en": {
        "t": ["I have been doing {a} {b} and {c}.", "After {a} yesterday, {c}.", "Warm up properly before {a}; skipping it is how injuries happen.",
              "Training for {a} {b} taught me more about pacing than any app.", "Our group meets for {a} {b}, newcomers are always welcome.",
              "Last season {c}, mostly thanks to {a}.", "Rest days matter as much as {a} itself.", "What shoes do you recommend for {a}?"],
        "a": "interval running|the Saturday football match|swimming laps|a 10K race|cycling to work|the climbing wall|strength training|"
             "a half marathon|the volleyball league|cross-country skiing",
        "b": "three times a week|before work|with the local club|after a long break|in the rain|with a heart-rate monitor",
        "c": "my knees hurt for days|I finally beat my personal best|the coach changed our warm-up|my pace dropped in the second half|"
             "the team played much better together",
        "q": ["preparing for my first long distance run", "avoiding injuries when training", "amateur team sports to join",
              "improving running pace", "choosing shoes for training"]}, "pl": {
        "t": ["Od kilku miesięcy mam w planie {a} {b}, a ostatnio {c}.", "Po wczorajszym treningu {c}.",
              "Zanim zaczniesz {a}, porządnie się rozgrzej – bez tego łatwo o kontuzję.", "Nic nie nauczyło mnie rozkładania sił tak jak {a} {b}.",
              "Nasza grupa spotyka się {b} – wybieramy {a}, nowe osoby są zawsze mile widziane.",
              "W zeszłym sezonie {c}, głównie dzięki temu, że wybrałem {a}.", "Dni odpoczynku są równie ważne jak {a}.", "Jakie buty polecacie na {a}?"],
        "a": "bieganie interwałowe|sobotni mecz piłki nożnej|pływanie na basenie|bieg na 10 km|dojazdy rowerem do pracy|wspinanie na ściance|"
             "trening siłowy|półmaraton|mecze siatkówki|narciarstwo biegowe",
        "b": "trzy razy w tygodniu|przed pracą|z lokalnym klubem|po długiej przerwie|w deszczu|z pulsometrem",
        "c": "kolana bolały mnie przez kilka dni|w końcu pobiłem rekord życiowy|trener zmienił nam rozgrzewkę|w drugiej połowie spadło mi tempo|"
             "drużyna grała o wiele lepiej jako zespół",
        "q": ["przygotowanie do pierwszego długiego biegu", "jak unikać kontuzji podczas treningu", "amatorskie drużyny, do których można dołączyć",
              "jak poprawić tempo biegu", "wybór butów treningowych"]}},
    "gardening": {"emoji": "🌱 🍅 🌷", "en": {
        "t": ["This year I grew {a} {b} and the harvest was better than ever.", "The best time to plant {a} is {c}.",
              "Growing {a} {b} works surprisingly well in a small garden.", "Aphids attacked {a} again; a soap spray helped more than I expected.",
              "Pruning {a} {c} keeps the plants healthy.", "Does anyone have experience with {a} {b}?",
              "Our allotment neighbour swears by {a} grown {b}.", "Slugs love {a}, so protect the seedlings {c}."],
        "a": "tomatoes|rose bushes|basil|young apple trees|strawberries|potatoes|lavender|runner beans|courgettes|cucumbers",
        "b": "with compost|with rainwater from the barrel|under a layer of mulch|with diluted nettle fertiliser|in partial shade|in sandy soil",
        "c": "in early May|after the last frost|in late autumn|every other evening|before the first heat wave",
        "q": ["when to plant vegetables outdoors", "getting rid of aphids and slugs organically", "growing herbs on a small balcony",
              "natural fertiliser for the vegetable patch", "pruning shrubs in autumn"]}, "pl": {
        "t": ["W tym roku posadziłam {a} {b} i plony były lepsze niż kiedykolwiek.", "Najlepiej sadzić {a} {c}.",
              "Trzymam {a} {b} i sprawdza się to nawet w małym ogrodzie.", "Mszyce znowu zaatakowały {a}; oprysk z szarego mydła pomógł bardziej, niż się spodziewałem.",
              "Przycinaj {a} {c}, a rośliny będą zdrowsze.", "Czy ktoś próbował hodować {a} {b}?",
              "Sąsiad z działki zawsze podlewa {a} {c}.", "Ślimaki uwielbiają {a}, więc zabezpiecz sadzonki {c}."],
        "a": "pomidory|krzewy róż|bazylię na balkonie|młode jabłonie|truskawki|ziemniaki|lawendę|fasolę tyczną|cukinie|ogórki",
        "b": "z kompostem|podlewane deszczówką z beczki|pod warstwą ściółki|z rozcieńczoną gnojówką z pokrzywy|w półcieniu|na piaszczystej glebie",
        "c": "na początku maja|po ostatnich przymrozkach|późną jesienią|co drugi wieczór|przed pierwszą falą upałów",
        "q": ["kiedy sadzić warzywa do gruntu", "ekologiczne sposoby na mszyce i ślimaki", "uprawa ziół na małym balkonie",
              "naturalny nawóz do warzywnika", "przycinanie krzewów jesienią"]}},
    "music": {"emoji": "🎵 🎹 🎻", "en": {
        "t": ["I practise {a} {b} and it finally clicks.", "Learning {a} {b} is slow at first, then suddenly fun.", "Last night I listened to {c} on repeat.",
              "Our teacher asked us to play along with {c} to work on timing.", "If you are starting {a}, buy a decent tuner before anything else.",
              "Does anyone know a good arrangement of {c} for {a}?", "The acoustics in the old church made {c} sound incredible.",
              "Recording myself playing {a} showed me how rushed my rhythm was."],
        "a": "the piano|jazz guitar|the violin|choir singing|the drums|the ukulele|the cello|bass guitar",
        "b": "for twenty minutes a day|with a metronome|by ear|from sheet music|with an online teacher|with friends on Friday evenings",
        "c": "Chopin's nocturnes|old Beatles records|a Miles Davis album|Polish folk songs|the Goldberg Variations|a film soundtrack",
        "q": ["learning an instrument as an adult", "how to practise rhythm and timing", "classical piano pieces to listen to",
              "recording yourself while practising", "playing songs by ear"]}, "pl": {
        "t": ["Ćwiczę {a} {b} i wreszcie zaczyna mi to wychodzić.", "Kiedy zaczynasz przygodę z muzyką, granie {b} na początku idzie powoli.",
              "Wczoraj wieczorem puszczałam w kółko {c}.", "Nauczyciel kazał nam ćwiczyć {a} {b}, żeby poprawić rytm.",
              "Jeśli zaczynasz ćwiczyć {a}, najpierw kup porządny stroik.", "Zna ktoś dobre opracowanie na {a}?",
              "W starym kościele z piękną akustyką usłyszałem {c} na żywo.", "Kiedy nagrałem, jak ćwiczę {a}, usłyszałem, jak bardzo przyspieszam."],
        "a": "fortepian|gitarę jazzową|skrzypce|śpiew w chórze|perkusję|ukulele|wiolonczelę|gitarę basową",
        "b": "po dwadzieścia minut dziennie|z metronomem|ze słuchu|z nut|z nauczycielem online|ze znajomymi w piątkowe wieczory",
        "c": "nokturny Chopina|stare płyty Beatlesów|album Milesa Davisa|polskie pieśni ludowe|Wariacje Goldbergowskie|muzykę filmową",
        "q": ["nauka gry na instrumencie w dorosłym wieku", "jak ćwiczyć rytm i wyczucie czasu", "muzyka klasyczna na fortepian do posłuchania",
              "nagrywanie siebie podczas ćwiczeń", "granie ze słuchu"]}},
    "science": {"emoji": "🔭 🧬 ⚛️", "en": {
        "t": ["I learned about {a} from {b}.", "Reading about {a} reminds me how much we still do not understand.",
              "Can someone explain {a} without heavy maths?", "The latest results on {a} depend a lot on {c}.",
              "{b} made me rethink what I knew about {a}.", "Good science journalism about {a} should mention {c}.",
              "My kids asked about {a} and I had to look up the details.", "Funding for research on {a} keeps growing."],
        "a": "the James Webb telescope|CRISPR gene editing|quantum computers|the Large Hadron Collider|climate models|mRNA vaccines|"
             "black holes|gut bacteria|superconductors|exoplanet surveys",
        "b": "a new paper in Nature|a popular-science podcast|my physics lecturer|a documentary I watched|the university open day",
        "c": "measurement error|peer review|reproducibility|statistical significance|the scientific method",
        "q": ["recent discoveries in astronomy", "how gene editing works", "explaining quantum physics simply",
              "why reproducibility matters in research", "popular science recommendations"]}, "pl": {
        "t": ["Ostatnio dużo czytam {a}.", "Czytając {a}, uświadamiam sobie, jak wiele jeszcze nie rozumiemy.",
              "Czy ktoś umie opowiedzieć {a} bez skomplikowanej matematyki?", "W dyskusji {a} kluczowe jest jedno: {c}.",
              "{b} sprawił, że na nowo przemyślałem to, co wiem {a}.", "Dobre dziennikarstwo naukowe piszące {a} powinno wspominać, czym jest {c}.",
              "Dzieci zapytały mnie {a} i musiałem doczytać szczegóły.", "Coraz więcej pieniędzy idzie na badania, a najgłośniej mówi się {a}."],
        "a": "o teleskopie Jamesa Webba|o edycji genów CRISPR|o komputerach kwantowych|o Wielkim Zderzaczu Hadronów|o modelach klimatu|"
             "o szczepionkach mRNA|o czarnych dziurach|o bakteriach jelitowych|o nadprzewodnikach|o poszukiwaniach egzoplanet",
        "b": "nowy artykuł w Nature|podcast popularnonaukowy|mój wykładowca fizyki|dokument, który ostatnio obejrzałem,|dzień otwarty na uczelni",
        "c": "błąd pomiaru|recenzja naukowa|powtarzalność wyników|istotność statystyczna|metoda naukowa",
        "q": ["najnowsze odkrycia w astronomii", "na czym polega edycja genów", "fizyka kwantowa w prostych słowach",
              "dlaczego powtarzalność badań jest ważna", "polecane źródła popularnonaukowe"]}},
    "customer_support": {"emoji": "🙏 📦 😕", "en": {
        "t": ["Hello, {a} {b}.", "I contacted you yesterday because {a} {b}, but nobody replied.", "Please find the {c} attached; {a} {b}.",
              "Thank you for the quick response, {a} is fine now.", "Could you escalate this? Right now {a} {b} and I need it sorted before Friday.",
              "Your chatbot could not help: {a} {b}.", "Before we can help, please send us your {c}.",
              "We are sorry for the trouble with {a}; a refund will be issued within five working days."],
        "a": "my order|the invoice|the refund|my account password|the subscription|the delivery|the warranty claim|the mobile app",
        "b": "has a problem I cannot solve|is not working as expected|needs to be checked again|has been stuck for a week|was handled by three different agents",
        "c": "order number|screenshot|invoice number|email address|tracking link",
        "q": ["package never delivered", "charged twice for one purchase", "can't log in to my account",
              "how long does a refund take", "cancel my subscription"]}, "pl": {
        "t": ["Dzień dobry, {a} {b}.", "Pisałem wczoraj, bo {a} {b}, ale nikt nie odpowiedział.", "W załączniku przesyłam {c}; {a} {b}.",
              "Dziękuję za szybką odpowiedź, teraz wszystko jest w porządku.", "Czy można to przekazać wyżej? Obecnie {a} {b}, a potrzebuję rozwiązania przed piątkiem.",
              "Wasz chatbot nie pomógł: {a} {b}.", "Zanim będziemy mogli pomóc, prosimy o {c}.",
              "Przepraszamy za kłopot, zwrot środków nastąpi w ciągu pięciu dni roboczych."],
        "a": "moje zamówienie|faktura|zwrot pieniędzy|hasło do konta|subskrypcja|przesyłka|reklamacja gwarancyjna|aplikacja mobilna",
        "b": "nadal nie działa|wciąż czeka na rozpatrzenie|wymaga ponownego sprawdzenia|od tygodnia stoi w miejscu|pokazuje błędną kwotę",
        "c": "numer zamówienia|zrzut ekranu|numer faktury|adres e-mail|link do śledzenia przesyłki",
        "q": ["paczka nie dotarła", "podwójnie pobrana opłata", "nie mogę zalogować się na konto", "ile trwa zwrot pieniędzy", "jak anulować subskrypcję"]}},
}
TOPICS = tuple(CORPUS)
CHAT = {
    "en": {"open": ["Hey!", "Hi all!", "Quick question:", "Ok, so here's the thing:", "Morning everyone!", "Thanks for the tip earlier.", "Update:"],
           "close": ["Any ideas?", "Thoughts?", "Let me know!", "Cheers", "Will report back.", "Does that make sense?"]},
    "pl": {"open": ["Hej!", "Cześć wszystkim!", "Szybkie pytanie:", "No dobra, sprawa wygląda tak:", "Dzień dobry!", "Dzięki za wcześniejszą radę.", "Aktualizacja:"],
           "close": ["Jakieś pomysły?", "Co myślicie?", "Dajcie znać!", "Pozdrawiam", "Dam znać, jak poszło.", "Ma to sens?"]},
}
_SLOT = re.compile(r"\{([abc])\}")


def nanoid(*parts) -> str:
    """A 21-character nanoid-style id derived from ``parts``: stable for the same seed and row."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return "".join(NANOID_ALPHABET[b & 63] for b in digest[:NANOID_SIZE])


def sentence(rng: random.Random, topic: str, lang: str, template: str | None = None) -> str:
    """One filled-in template; every slot occurrence draws independently."""
    block = CORPUS[topic][lang]
    text = _SLOT.sub(lambda m: rng.choice(block[m.group(1)].split("|")), template or rng.choice(block["t"]))
    return text[0].upper() + text[1:]


def paragraph(rng: random.Random, topic: str, lang: str, n: int) -> str:
    """``n`` sentences; templates do not repeat within a paragraph (up to 8), so rows read naturally."""
    templates = CORPUS[topic][lang]["t"]
    picked = rng.sample(templates, min(n, len(templates))) + [rng.choice(templates) for _ in range(n - len(templates))]
    return " ".join(sentence(rng, topic, lang, t) for t in picked)


def long_text(rng: random.Random, topic: str, lang: str) -> str:
    """A few thousand characters: several paragraphs, past MiniLM's 256-token window."""
    return "\n\n".join(paragraph(rng, topic, lang, rng.randint(5, 8)) for _ in range(rng.randint(7, 10)))


def _row_kind(i: int) -> str:
    # Fixed positions (not random draws) so even a 120-row demo holds every edge case the
    # tests need: a whitespace-only row (11), a NULL row (111), a long text (17), deleted (5, 38, 71...).
    if i % 100 == 11:
        return ("whitespace", "null", "empty")[(i // 100) % 3]
    if i % 250 == 17:
        return "long"
    return "deleted" if i % 100 in (5, 38, 71) else "normal"


def _content(kind: str, rng: random.Random, topic: str, lang: str, n_sentences: int) -> str | None:
    if kind == "null":
        return None
    if kind == "empty":
        return ""
    if kind == "whitespace":
        return WHITESPACE_ONLY
    if kind == "long":
        return long_text(rng, topic, lang)
    return paragraph(rng, topic, lang, n_sentences)


def _emoji(rng: random.Random, topic: str, text: str | None, rate: float) -> str | None:
    if text and text.strip() and rng.random() < rate:
        return f"{text} {rng.choice(CORPUS[topic]['emoji'].split())}"
    return text


def document_row(i: int, seed: int = 7) -> dict:
    """Row ``i`` of the documents table; depends only on (seed, i), never on the row count."""
    rng = random.Random(f"{seed}:documents:{i}")
    topic, lang = rng.choice(TOPICS), ("en" if rng.random() < 0.55 else "pl")
    kind = _row_kind(i)
    created = EPOCH + timedelta(seconds=rng.randrange(365 * 86400))
    updated = created + timedelta(seconds=rng.choice([0, rng.randrange(30 * 86400)]))
    deleted = updated + timedelta(days=rng.randint(1, 60)) if kind == "deleted" else None
    content = _emoji(rng, topic, _content(kind, rng, topic, lang, rng.randint(2, 6)), 0.05)
    return {
        "id": nanoid(seed, "documents", i), "content": content,
        "workspace_name": rng.choice(WORKSPACES), "peer_name": rng.choice(PEERS),
        "metadata": {"topic": topic, "lang": lang, "kind": kind, "demo_seed": seed},
        "created_at": created, "updated_at": deleted or updated, "deleted_at": deleted,
    }


def message_row(i: int, seed: int = 7) -> dict:
    """Row ``i`` of message_embeddings: a chat message; id ``i + 1`` so seeded ids are stable."""
    rng = random.Random(f"{seed}:messages:{i}")
    topic, lang = rng.choice(TOPICS), ("en" if rng.random() < 0.55 else "pl")
    kind = _row_kind(i)
    if kind in ("normal", "deleted", "long"):  # messages have no soft delete; long chats are rare
        chat = CHAT[lang]
        parts = [rng.choice(chat["open"])] if rng.random() < 0.6 else []
        parts.append(paragraph(rng, topic, lang, rng.randint(1, 2)))
        if rng.random() < 0.4:
            parts.append(rng.choice(chat["close"]))
        content = " ".join(parts)
    else:
        content = _content(kind, rng, topic, lang, 1)
    return {
        "id": i + 1, "content": _emoji(rng, topic, content, 0.15), "topic": topic,
        "message_id": nanoid(seed, "messages", i), "workspace_name": rng.choice(WORKSPACES),
        "created_at": EPOCH + timedelta(seconds=rng.randrange(365 * 86400)),
    }


def eval_queries(n_per_topic: int = 3, seed: int = 7) -> list[dict]:
    """``n_per_topic`` queries per topic, alternating languages, drawn without repeats."""
    if not 1 <= n_per_topic <= 2 * min(len(CORPUS[t][lang]["q"]) for t in TOPICS for lang in LANGS):
        raise ValueError(f"n_per_topic must be between 1 and 10, got {n_per_topic}")
    rng = random.Random(f"{seed}:queries")
    out = []
    for t_idx, topic in enumerate(TOPICS):
        pools = {lang: rng.sample(range(len(CORPUS[topic][lang]["q"])), len(CORPUS[topic][lang]["q"])) for lang in LANGS}
        for k in range(n_per_topic):
            lang = LANGS[(t_idx + k) % 2]
            j = pools[lang].pop()
            out.append({"query_id": f"{topic}-{lang}-{j}", "text": CORPUS[topic][lang]["q"][j], "topic": topic, "lang": lang})
    return out
