"""Where synthetic customers live: provinces and states, their sales regions,
cities, postcodes and the codes that identity numbers carry.

Data, not logic. Every place maps onto one of the five sales regions of the
data contract (East, North, South, West, Central). Weights are rough
populations in millions, so customers spread as people do.
"""

from __future__ import annotations

REGIONS: tuple[str, ...] = ("East", "North", "South", "West", "Central")

# province -> (region, population weight, GB/T 2260 code (first two digits of
# the resident identity number), first two digits of its postcodes, cities)
CN_PROVINCES: dict[str, tuple[str, float, str, str, tuple[str, ...]]] = {
    "北京市": ("North", 22, "11", "10", ("北京市",)),
    "天津市": ("North", 14, "12", "30", ("天津市",)),
    "河北省": ("North", 75, "13", "05", ("石家庄市", "唐山市", "保定市", "邯郸市")),
    "山西省": ("North", 35, "14", "03", ("太原市", "大同市")),
    "内蒙古自治区": ("North", 24, "15", "01", ("呼和浩特市", "包头市")),
    "辽宁省": ("North", 42, "21", "11", ("沈阳市", "大连市")),
    "吉林省": ("North", 24, "22", "13", ("长春市", "吉林市")),
    "黑龙江省": ("North", 31, "23", "15", ("哈尔滨市", "齐齐哈尔市")),
    "上海市": ("East", 25, "31", "20", ("上海市",)),
    "江苏省": ("East", 85, "32", "21", ("南京市", "苏州市", "无锡市", "常州市")),
    "浙江省": ("East", 65, "33", "31", ("杭州市", "宁波市", "温州市")),
    "安徽省": ("East", 61, "34", "23", ("合肥市", "芜湖市")),
    "福建省": ("East", 42, "35", "35", ("福州市", "厦门市", "泉州市")),
    "江西省": ("East", 45, "36", "33", ("南昌市", "赣州市")),
    "山东省": ("East", 102, "37", "25", ("济南市", "青岛市", "烟台市", "潍坊市")),
    "河南省": ("Central", 99, "41", "45", ("郑州市", "洛阳市", "南阳市")),
    "湖北省": ("Central", 58, "42", "43", ("武汉市", "宜昌市", "襄阳市")),
    "湖南省": ("Central", 66, "43", "41", ("长沙市", "株洲市", "衡阳市")),
    "广东省": ("South", 127, "44", "51", ("广州市", "深圳市", "东莞市", "佛山市")),
    "广西壮族自治区": ("South", 50, "45", "53", ("南宁市", "柳州市", "桂林市")),
    "海南省": ("South", 10, "46", "57", ("海口市", "三亚市")),
    "重庆市": ("West", 32, "50", "40", ("重庆市",)),
    "四川省": ("West", 84, "51", "61", ("成都市", "绵阳市")),
    "贵州省": ("West", 39, "52", "55", ("贵阳市", "遵义市")),
    "云南省": ("West", 47, "53", "65", ("昆明市", "大理市")),
    "西藏自治区": ("West", 4, "54", "85", ("拉萨市",)),
    "陕西省": ("West", 40, "61", "71", ("西安市", "宝鸡市")),
    "甘肃省": ("West", 25, "62", "73", ("兰州市",)),
    "青海省": ("West", 6, "63", "81", ("西宁市",)),
    "宁夏回族自治区": ("West", 7, "64", "75", ("银川市",)),
    "新疆维吾尔自治区": ("West", 26, "65", "83", ("乌鲁木齐市",)),
}

# state -> (region, population weight, cities); ZIP ranges come from Faker's
# en_US address provider (``states_postcode``).
US_STATES: dict[str, tuple[str, float, tuple[str, ...]]] = {
    "NY": ("East", 19.6, ("New York", "Buffalo", "Rochester")),
    "NJ": ("East", 9.3, ("Newark", "Jersey City")),
    "PA": ("East", 13.0, ("Philadelphia", "Pittsburgh")),
    "MA": ("East", 7.0, ("Boston", "Worcester")),
    "CT": ("East", 3.6, ("Hartford", "New Haven")),
    "RI": ("East", 1.1, ("Providence",)),
    "VT": ("East", 0.6, ("Burlington",)),
    "NH": ("East", 1.4, ("Manchester",)),
    "ME": ("East", 1.4, ("Portland",)),
    "MD": ("East", 6.2, ("Baltimore",)),
    "DE": ("East", 1.0, ("Wilmington",)),
    "DC": ("East", 0.7, ("Washington",)),
    "VA": ("East", 8.7, ("Virginia Beach", "Richmond")),
    "TX": ("South", 30.0, ("Houston", "Dallas", "Austin", "San Antonio")),
    "FL": ("South", 22.6, ("Miami", "Orlando", "Tampa", "Jacksonville")),
    "GA": ("South", 11.0, ("Atlanta", "Savannah")),
    "NC": ("South", 10.8, ("Charlotte", "Raleigh")),
    "SC": ("South", 5.3, ("Charleston", "Columbia")),
    "AL": ("South", 5.1, ("Birmingham", "Montgomery")),
    "MS": ("South", 2.9, ("Jackson",)),
    "LA": ("South", 4.6, ("New Orleans", "Baton Rouge")),
    "TN": ("South", 7.1, ("Nashville", "Memphis")),
    "KY": ("South", 4.5, ("Louisville", "Lexington")),
    "AR": ("South", 3.0, ("Little Rock",)),
    "OK": ("South", 4.0, ("Oklahoma City", "Tulsa")),
    "WV": ("South", 1.8, ("Charleston",)),
    "MN": ("North", 5.7, ("Minneapolis", "Saint Paul")),
    "WI": ("North", 5.9, ("Milwaukee", "Madison")),
    "MI": ("North", 10.0, ("Detroit", "Grand Rapids")),
    "ND": ("North", 0.8, ("Fargo",)),
    "SD": ("North", 0.9, ("Sioux Falls",)),
    "IL": ("Central", 12.5, ("Chicago", "Springfield")),
    "OH": ("Central", 11.8, ("Columbus", "Cleveland", "Cincinnati")),
    "IN": ("Central", 6.8, ("Indianapolis",)),
    "IA": ("Central", 3.2, ("Des Moines",)),
    "MO": ("Central", 6.2, ("Kansas City", "St. Louis")),
    "KS": ("Central", 2.9, ("Wichita",)),
    "NE": ("Central", 2.0, ("Omaha",)),
    "CA": ("West", 39.0, ("Los Angeles", "San Francisco", "San Diego", "San Jose")),
    "WA": ("West", 7.8, ("Seattle", "Spokane")),
    "OR": ("West", 4.2, ("Portland", "Eugene")),
    "NV": ("West", 3.2, ("Las Vegas", "Reno")),
    "AZ": ("West", 7.4, ("Phoenix", "Tucson")),
    "UT": ("West", 3.4, ("Salt Lake City",)),
    "CO": ("West", 5.9, ("Denver", "Colorado Springs")),
    "NM": ("West", 2.1, ("Albuquerque",)),
    "ID": ("West", 2.0, ("Boise",)),
    "MT": ("West", 1.1, ("Billings",)),
    "WY": ("West", 0.6, ("Cheyenne",)),
    "AK": ("West", 0.7, ("Anchorage",)),
    "HI": ("West", 1.4, ("Honolulu",)),
}

# mobile number prefixes of the three Chinese carriers (and virtual
# operators) that libphonenumber accepts as valid
CN_MOBILE_PREFIXES: tuple[str, ...] = (
    "130", "131", "132", "133", "134", "135", "136", "137", "138", "139",
    "145", "147", "150", "151", "152", "153", "155", "156", "157", "158", "159",
    "166", "173", "175", "176", "177", "178",
    "180", "181", "182", "183", "184", "185", "186", "187", "188", "189",
    "191", "198", "199",
)

# US area codes in service (a spread over the country)
US_AREA_CODES: tuple[str, ...] = (
    "201", "202", "203", "205", "206", "207", "208", "212", "213", "214", "215",
    "216", "217", "301", "303", "304", "305", "310", "312", "313", "314", "315",
    "317", "402", "404", "405", "406", "407", "408", "410", "412", "414", "415",
    "501", "502", "503", "504", "505", "512", "513", "602", "608", "612", "614",
    "615", "617", "619", "646", "702", "703", "704", "713", "718", "801", "808",
    "813", "816", "818", "901", "907", "916", "919",
)

# free e-mail providers people use, per locale, with rough shares
EMAIL_DOMAINS: dict[str, dict[str, float]] = {
    "zh_CN": {"qq.com": 0.38, "163.com": 0.22, "126.com": 0.1, "sina.com": 0.06,
              "foxmail.com": 0.08, "139.com": 0.06, "gmail.com": 0.05, "outlook.com": 0.05},
    "en_US": {"gmail.com": 0.45, "yahoo.com": 0.16, "outlook.com": 0.12, "hotmail.com": 0.1,
              "icloud.com": 0.1, "aol.com": 0.04, "comcast.net": 0.03},
}

# common English given names and the short forms people enter instead
NICKNAMES: dict[str, str] = {
    "William": "Bill", "Robert": "Bob", "Richard": "Rick", "James": "Jim",
    "John": "Jack", "Michael": "Mike", "Joseph": "Joe", "Thomas": "Tom",
    "Christopher": "Chris", "Daniel": "Dan", "Matthew": "Matt", "Anthony": "Tony",
    "Joshua": "Josh", "Andrew": "Andy", "Nicholas": "Nick", "Benjamin": "Ben",
    "Samuel": "Sam", "Jonathan": "Jon", "Steven": "Steve", "Timothy": "Tim",
    "Elizabeth": "Liz", "Jennifer": "Jen", "Jessica": "Jess", "Katherine": "Kate",
    "Kimberly": "Kim", "Patricia": "Pat", "Rebecca": "Becky", "Samantha": "Sam",
    "Stephanie": "Steph", "Victoria": "Vicky", "Margaret": "Peggy", "Susan": "Sue",
    "Deborah": "Debbie", "Christina": "Tina", "Alexandra": "Alex", "Amanda": "Mandy",
}

# street words and the abbreviations clerks type
ADDRESS_ABBREVIATIONS: dict[str, str] = {
    "Street": "St", "Avenue": "Ave", "Road": "Rd", "Boulevard": "Blvd", "Drive": "Dr",
    "Lane": "Ln", "Court": "Ct", "Place": "Pl", "Square": "Sq", "Parkway": "Pkwy",
    "Suite": "Ste", "Apt.": "#", "Mount": "Mt", "North": "N", "South": "S",
    "East": "E", "West": "W", "Highway": "Hwy", "Heights": "Hts", "Terrace": "Ter",
}
