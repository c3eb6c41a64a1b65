"""Make the example shop export (run once; the output is committed).

A small CSV export as a Chinese web shop's back office might hand it over:
Chinese column names, one file GBK-encoded, one UTF-8 with a byte-order
mark, one semicolon-separated; dates in several layouts; amounts with
currency signs and thousands separators; and a handful of rows that break
the data contract, so ``crmlab validate`` has something to quarantine.
Every person is made up by Faker (seeded): no real personal data.

    python examples/shop-export/make_example.py
    crmlab validate --source examples/shop-export --mapping shop-export
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from faker import Faker

HERE = Path(__file__).resolve().parent
SEED = 20240630
N_MEMBERS, N_ORDERS, N_PRODUCTS = 300, 1500, 40
END = np.datetime64("2024-06-30T23:59:59")

# rows planted to break the contract: 1-based data row -> what is wrong
PLANTED_ORDERS = {
    17: "negative amount", 230: "amount not a number", 404: "unknown status",
    615: "future date", 777: "missing member id", 901: "repeated order number",
    1203: "absurd amount",
}


def _date(ts: np.datetime64, layout: int) -> str:
    s = str(ts)  # 2024-03-05T14:22:07
    y, m, d, hh, mm = s[:4], s[5:7], s[8:10], s[11:13], s[14:16]
    return [f"{y}-{m}-{d} {hh}:{mm}:{s[17:19]}", f"{y}/{m}/{d} {hh}:{mm}",
            f"{int(y)}年{int(m)}月{int(d)}日 {hh}:{mm}"][layout]


def _write(path: Path, header: list[str], rows: list[list], encoding: str, delimiter=","):
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path.write_bytes(buf.getvalue().encode(encoding))


def main() -> None:
    rng = np.random.default_rng(SEED)
    fake = Faker("zh_CN")
    fake.seed_instance(SEED)

    members = []
    signup0 = np.datetime64("2021-01-01")
    for i in range(N_MEMBERS):
        gender = "男" if rng.random() < 0.5 else "女"
        name = fake.name_male() if gender == "男" else fake.name_female()
        birth = np.datetime64("1960-01-01") + int(rng.integers(0, 40 * 365))
        b = str(birth)
        birth_text = [b, b.replace("-", "/"), f"{int(b[:4])}年{int(b[5:7])}月{int(b[8:])}日"][
            int(rng.integers(0, 3))]
        signup = signup0 + int(rng.integers(0, 3 * 365))
        province = fake.province()
        members.append([f"M{10001 + i}", name, fake.phone_number(), fake.safe_email(),
                        gender, birth_text, str(signup), province, fake.city_name()])
    _write(HERE / "members.csv",
           ["会员编号", "姓名", "手机号", "邮箱", "性别", "出生日期", "注册日期", "省份", "城市"],
           members, "gbk")

    products = []
    cats = ["茶叶", "茶具", "零食", "礼盒"]
    for i in range(N_PRODUCTS):
        cost = round(float(rng.gamma(2.0, 30.0)), 2)
        products.append([f"P{201 + i}", f"{cats[i % 4]}{i + 1}号", cats[i % 4],
                         f"{cost:.2f}", f"{cost * rng.uniform(1.3, 2.5):.2f}"])
    _write(HERE / "products.csv", ["商品编号", "商品名称", "类目", "成本价", "售价"],
           products, "utf-8", delimiter=";")

    start = np.datetime64("2022-01-01T00:00:00")
    span = int((END - start) / np.timedelta64(1, "s"))
    times = np.sort(start + rng.integers(0, span, N_ORDERS).astype("timedelta64[s]"))
    orders = []
    for i, ts in enumerate(times):
        row = i + 1
        amount = float(rng.gamma(2.0, 80.0))
        text = f"¥{amount:,.2f}" if rng.random() < 0.2 else f"{amount:.2f}"
        status = rng.choice(["已支付", "已支付", "已支付", "已退款", "已取消", " 已支付 "])
        orders.append([f"SO{2022000000 + row}", members[int(rng.integers(0, N_MEMBERS))][0],
                       _date(ts, int(rng.integers(0, 3))), text, status,
                       rng.choice(["支付宝", "微信支付", "银行卡"])])
    o = {r: orders[r - 1] for r in PLANTED_ORDERS}
    o[17][3] = "-59.00"
    o[230][3] = "待定"
    o[404][4] = "待确认"
    o[615][2] = "2031-05-01 10:00:00"
    o[777][1] = ""
    o[901][0] = orders[899][0]
    o[1203][3] = "8800000.00"
    _write(HERE / "orders_export.csv",
           ["订单编号", "会员编号", "下单时间", "实付金额", "订单状态", "支付方式"],
           orders, "utf-8-sig")


if __name__ == "__main__":
    main()
