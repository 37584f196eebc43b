"""Real Debezium 3.7 messages through the decoder: one captured session of the local stack, replayed.

The capture (`cardo stack up` on private ports, then psycopg): inserts into all four tables with non-ASCII
text, NULLs, a date in 1900 and one in 2999, a pre-epoch timestamptz with microseconds and one with a +02:00
offset, a loan with ~6 kB of notes and an update leaving them TOASTed, a payment updated then deleted, a
primary-key change, a TRUNCATE, ALTER TABLEs (a column added, two widened, two narrowed), then a fresh initial
snapshot (the connector's offsets reset) for `r` events. Values are stored as Debezium wrote them,
deduplicated: each message is `{"schema":S,"payload":P}` with S rebuilt from the table's column schemas and
the envelope's constant part; the rebuild was checked byte for byte against the capture.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pyarrow as pa
import pytest

from cardo_pipeline.cdc.arrow_types import raw_arrow_schema
from cardo_pipeline.cdc.decode import KafkaRecord, decode_batch
from cardo_pipeline.tables import TABLES_BY_NAME

pytestmark = pytest.mark.usefixtures("decoder_path")  # every test on the native and the Python path

LONG_NOTES = " ".join(f"call {i}: borrower promised payment by day {i % 28 + 1}, ref {i * 7919 % 100003}"
                      for i in range(80))
PRIMARY_KEYS = {"loans": "loan_id", "borrowers": "borrower_id", "payments": "payment_id",
                "collaterals": "collateral_id"}
INGESTED_AT = datetime(2026, 11, 23, 13, 0, tzinfo=UTC)

_ENVELOPE_REST = (
    '{"type":"struct","fields":[{"type":"string","optional":false,"field":"version"},{"type":"str'
    'ing","optional":false,"field":"connector"},{"type":"string","optional":false,"field":"name"}'
    ',{"type":"int64","optional":false,"field":"ts_ms"},{"type":"string","optional":true,"name":"'
    'io.debezium.data.Enum","version":1,"parameters":{"allowed":"true,first,first_in_data_collect'
    'ion,last_in_data_collection,last,false,incremental"},"default":"false","field":"snapshot"},{'
    '"type":"string","optional":false,"field":"db"},{"type":"string","optional":true,"field":"seq'
    'uence"},{"type":"int64","optional":true,"field":"ts_us"},{"type":"int64","optional":true,"fi'
    'eld":"ts_ns"},{"type":"string","optional":false,"field":"schema"},{"type":"string","optional'
    '":false,"field":"table"},{"type":"int64","optional":true,"field":"txId"},{"type":"int64","op'
    'tional":true,"field":"lsn"},{"type":"int64","optional":true,"field":"xmin"},{"type":"string"'
    ',"optional":true,"field":"origin"},{"type":"int64","optional":true,"field":"origin_lsn"}],"o'
    'ptional":false,"name":"io.debezium.connector.postgresql.Source","version":1,"field":"source"'
    '},{"type":"struct","fields":[{"type":"string","optional":false,"field":"id"},{"type":"int64"'
    ',"optional":false,"field":"total_order"},{"type":"int64","optional":false,"field":"data_coll'
    'ection_order"}],"optional":true,"name":"event.block","version":1,"field":"transaction"},{"ty'
    'pe":"string","optional":false,"field":"op"},{"type":"int64","optional":true,"field":"ts_ms"}'
    ',{"type":"int64","optional":true,"field":"ts_us"},{"type":"int64","optional":true,"field":"t'
    's_ns"}'
)
_LOANS_COLUMNS = (
    '[{"type":"int64","optional":false,"field":"loan_id"},{"type":"int64","optional":false,"field'
    '":"borrower_id"},{"type":"string","optional":false,"field":"product"},{"type":"string","opti'
    'onal":false,"field":"currency"},{"type":"bytes","optional":false,"name":"org.apache.kafka.co'
    'nnect.data.Decimal","version":1,"parameters":{"scale":"2","connect.decimal.precision":"14"},'
    '"field":"principal"},{"type":"bytes","optional":false,"name":"org.apache.kafka.connect.data.'
    'Decimal","version":1,"parameters":{"scale":"5","connect.decimal.precision":"7"},"field":"int'
    'erest_rate"},{"type":"int32","optional":false,"field":"term_months"},{"type":"int32","option'
    'al":false,"name":"io.debezium.time.Date","version":1,"field":"origination_date"},{"type":"in'
    't32","optional":false,"name":"io.debezium.time.Date","version":1,"field":"maturity_date"},{"'
    'type":"bytes","optional":false,"name":"org.apache.kafka.connect.data.Decimal","version":1,"p'
    'arameters":{"scale":"2","connect.decimal.precision":"14"},"field":"outstanding_principal"},{'
    '"type":"string","optional":false,"field":"status"},{"type":"int32","optional":false,"field":'
    '"days_past_due"},{"type":"string","optional":true,"field":"servicer_notes"},{"type":"string"'
    ',"optional":false,"name":"io.debezium.time.ZonedTimestamp","version":1,"field":"updated_at"}'
    ']'
)
_BORROWERS_COLUMNS = (
    '[{"type":"int64","optional":false,"field":"borrower_id"},{"type":"string","optional":false,"'
    'field":"borrower_type"},{"type":"string","optional":false,"field":"full_name"},{"type":"int3'
    '2","optional":true,"name":"io.debezium.time.Date","version":1,"field":"birth_date"},{"type":'
    '"bytes","optional":false,"name":"org.apache.kafka.connect.data.Decimal","version":1,"paramet'
    'ers":{"scale":"2","connect.decimal.precision":"14"},"field":"annual_income"},{"type":"string'
    '","optional":false,"field":"employment_status"},{"type":"string","optional":false,"field":"p'
    'ostcode"},{"type":"string","optional":false,"field":"country_code"},{"type":"string","option'
    'al":false,"name":"io.debezium.time.ZonedTimestamp","version":1,"field":"created_at"},{"type"'
    ':"string","optional":false,"name":"io.debezium.time.ZonedTimestamp","version":1,"field":"upd'
    'ated_at"}]'
)

_PAYMENTS_COLUMNS = (
    '[{"type":"int64","optional":false,"field":"payment_id"},{"type":"int64","optional":false,"fi'
    'eld":"loan_id"},{"type":"int32","optional":false,"name":"io.debezium.time.Date","version":1,'
    '"field":"due_date"},{"type":"bytes","optional":false,"name":"org.apache.kafka.connect.data.D'
    'ecimal","version":1,"parameters":{"scale":"2","connect.decimal.precision":"14"},"field":"amo'
    'unt_due"},{"type":"int32","optional":true,"name":"io.debezium.time.Date","version":1,"field"'
    ':"paid_date"},{"type":"bytes","optional":false,"name":"org.apache.kafka.connect.data.Decimal'
    '","version":1,"parameters":{"scale":"2","connect.decimal.precision":"14"},"field":"amount_pa'
    'id"},{"type":"string","optional":false,"field":"status"},{"type":"string","optional":false,"'
    'name":"io.debezium.time.ZonedTimestamp","version":1,"field":"updated_at"}]'
)
_COLLATERALS_COLUMNS = (
    '[{"type":"int64","optional":false,"field":"collateral_id"},{"type":"int64","optional":false,'
    '"field":"loan_id"},{"type":"string","optional":false,"field":"collateral_type"},{"type":"byt'
    'es","optional":false,"name":"org.apache.kafka.connect.data.Decimal","version":1,"parameters"'
    ':{"scale":"2","connect.decimal.precision":"14"},"field":"appraised_value"},{"type":"int32","'
    'optional":false,"name":"io.debezium.time.Date","version":1,"field":"appraisal_date"},{"type"'
    ':"string","optional":false,"field":"postcode"},{"type":"string","optional":false,"field":"co'
    'untry_code"},{"type":"string","optional":false,"name":"io.debezium.time.ZonedTimestamp","ver'
    'sion":1,"field":"updated_at"}]'
)


def _replace_field(columns: str, old: str, new: str) -> str:
    assert old in columns
    return columns.replace(old, new)


_DECIMAL_14_2 = '"parameters":{"scale":"2","connect.decimal.precision":"14"}'
COLUMNS = {
    "LOANS_V1": _LOANS_COLUMNS,
    # ALTER TABLE loans ADD COLUMN risk_grade text
    "LOANS_RISK_GRADE": _LOANS_COLUMNS[:-1] + ',{"type":"string","optional":true,"field":"risk_grade"}]',
    "BORROWERS_V1": _BORROWERS_COLUMNS,
    # ALTER TABLE borrowers ALTER COLUMN annual_income TYPE numeric(20,4): more integer digits than registered
    "BORROWERS_WIDE_INCOME": _replace_field(
        _BORROWERS_COLUMNS, _DECIMAL_14_2 + ',"field":"annual_income"',
        '"parameters":{"scale":"4","connect.decimal.precision":"20"},"field":"annual_income"'),
    "PAYMENTS_V1": _PAYMENTS_COLUMNS,
    # ALTER TABLE payments ALTER COLUMN amount_due TYPE numeric(12,1): fits numeric(14,2)
    "PAYMENTS_AMOUNT_DUE_12_1": _replace_field(
        _PAYMENTS_COLUMNS, _DECIMAL_14_2 + ',"field":"amount_due"',
        '"parameters":{"scale":"1","connect.decimal.precision":"12"},"field":"amount_due"'),
    "COLLATERALS_V1": _COLLATERALS_COLUMNS,
    # ALTER TABLE collaterals ALTER COLUMN loan_id TYPE integer: fits bigint
    "COLLATERALS_INT_LOAN_ID": _replace_field(
        _COLLATERALS_COLUMNS, '{"type":"int64","optional":false,"field":"loan_id"}',
        '{"type":"int32","optional":false,"field":"loan_id"}'),
}
# ALTER TABLE loans ALTER COLUMN days_past_due TYPE bigint: does not fit the registry's integer
COLUMNS["LOANS_BIGINT_DPD"] = _replace_field(
    COLUMNS["LOANS_RISK_GRADE"], '{"type":"int32","optional":false,"field":"days_past_due"}',
    '{"type":"int64","optional":false,"field":"days_past_due"}')


def real_value(table: str, columns: str, payload: str) -> bytes:
    def image(field: str) -> str:
        return (f'{{"type":"struct","fields":{columns},"optional":true,'
                f'"name":"servicing.public.{table}.Value","field":"{field}"}}')

    schema = (f'{{"type":"struct","fields":[{image("before")},{image("after")},{_ENVELOPE_REST}],'
              f'"optional":false,"name":"servicing.public.{table}.Envelope","version":2}}')
    return f'{{"schema":{schema},"payload":{payload}}}'.encode()


def real_key(table: str, key: int | None) -> bytes | None:
    if key is None:
        return None  # a truncate has no key
    pk = PRIMARY_KEYS[table]
    return (f'{{"schema":{{"type":"struct","fields":[{{"type":"int64","optional":false,"field":"{pk}"}}],'
            f'"optional":false,"name":"servicing.public.{table}.Key"}},"payload":{{"{pk}":{key}}}}}').encode()


# (table, partition, offset, Kafka timestamp in ms, key, column schemas, payload or None for a tombstone)
CAPTURE: list[tuple[str, int, int, int, int | None, str | None, str | None]] = [
    ('loans', 0, 0, 1795438304949, 931001, 'LOANS_V1',
     '{"before":null,"after":{"loan_id":931001,"borrower_id":930001,"product":"mortgage","currency'
     '":"EUR","principal":"AX14QA==","interest_rate":"DDU=","term_months":300,"origination_date":1'
     '9783,"maturity_date":376199,"outstanding_principal":"AX14QA==","status":"active","days_past_'
     'due":0,"servicer_notes":'
     + json.dumps(LONG_NOTES) +
     ',"updated_at":"2024-03-01T09:30:00.000000Z"},"source":{"version":"3.7.0.Final","connector":"'
     'postgresql","name":"servicing","ts_ms":1795438304313,"snapshot":"false","db":"servicing","se'
     'quence":"[\\"26491984\\",\\"26496928\\"]","ts_us":1795438304313430,"ts_ns":1795438304313430000,"'
     'schema":"public","table":"loans","txId":732,"lsn":26496928,"xmin":null,"origin":null,"origin'
     '_lsn":null},"transaction":null,"op":"c","ts_ms":1795438304457,"ts_us":1795438304457635,"ts_n'
     's":1795438304457635554}'),
    ('loans', 0, 1, 1795438304953, 931001, 'LOANS_V1',
     '{"before":null,"after":{"loan_id":931001,"borrower_id":930001,"product":"mortgage","currency'
     '":"EUR","principal":"AX14QA==","interest_rate":"DDU=","term_months":300,"origination_date":1'
     '9783,"maturity_date":376199,"outstanding_principal":"7Sl5","status":"active","days_past_due"'
     ':31,"servicer_notes":"__debezium_unavailable_value","updated_at":"2024-03-01T09:30:00.000000'
     'Z"},"source":{"version":"3.7.0.Final","connector":"postgresql","name":"servicing","ts_ms":17'
     '95438304318,"snapshot":"false","db":"servicing","sequence":"[\\"26497456\\",\\"26497512\\"]","ts'
     '_us":1795438304318087,"ts_ns":1795438304318087000,"schema":"public","table":"loans","txId":7'
     '33,"lsn":26497512,"xmin":null,"origin":null,"origin_lsn":null},"transaction":null,"op":"u","'
     'ts_ms":1795438304459,"ts_us":1795438304459712,"ts_ns":1795438304459712279}'),
    ('loans', 0, 2, 1795438304954, 931001, 'LOANS_V1',
     '{"before":null,"after":{"loan_id":931001,"borrower_id":930001,"product":"mortgage","currency'
     '":"EUR","principal":"AX14QA==","interest_rate":"AYaf","term_months":300,"origination_date":1'
     '9783,"maturity_date":376199,"outstanding_principal":"7Sl5","status":"active","days_past_due"'
     ':31,"servicer_notes":"short note","updated_at":"2024-03-01T09:30:00.000000Z"},"source":{"ver'
     'sion":"3.7.0.Final","connector":"postgresql","name":"servicing","ts_ms":1795438304318,"snaps'
     'hot":"false","db":"servicing","sequence":"[\\"26497736\\",\\"26497960\\"]","ts_us":1795438304318'
     '817,"ts_ns":1795438304318817000,"schema":"public","table":"loans","txId":734,"lsn":26497960,'
     '"xmin":null,"origin":null,"origin_lsn":null},"transaction":null,"op":"u","ts_ms":17954383044'
     '61,"ts_us":1795438304461265,"ts_ns":1795438304461265106}'),
    ('loans', 0, 3, 1795438317268, 931001, 'LOANS_RISK_GRADE',
     '{"before":null,"after":{"loan_id":931001,"borrower_id":930001,"product":"mortgage","currency'
     '":"EUR","principal":"AX14QA==","interest_rate":"AYaf","term_months":300,"origination_date":1'
     '9783,"maturity_date":376199,"outstanding_principal":"7Sl5","status":"active","days_past_due"'
     ':31,"servicer_notes":"short note","updated_at":"2024-03-01T09:30:00.000000Z","risk_grade":"B'
     '"},"source":{"version":"3.7.0.Final","connector":"postgresql","name":"servicing","ts_ms":179'
     '5438317079,"snapshot":"false","db":"servicing","sequence":"[\\"26504080\\",\\"26505024\\"]","ts_'
     'us":1795438317079107,"ts_ns":1795438317079107000,"schema":"public","table":"loans","txId":74'
     '2,"lsn":26505024,"xmin":null,"origin":null,"origin_lsn":null},"transaction":null,"op":"u","t'
     's_ms":1795438317216,"ts_us":1795438317216677,"ts_ns":1795438317216677151}'),
    ('loans', 0, 4, 1795438317374, 931001, 'LOANS_BIGINT_DPD',
     '{"before":null,"after":{"loan_id":931001,"borrower_id":930001,"product":"mortgage","currency'
     '":"EUR","principal":"AX14QA==","interest_rate":"AYaf","term_months":300,"origination_date":1'
     '9783,"maturity_date":376199,"outstanding_principal":"7Sl5","status":"active","days_past_due"'
     ':45,"servicer_notes":"short note","updated_at":"2024-03-01T09:30:00.000000Z","risk_grade":"B'
     '"},"source":{"version":"3.7.0.Final","connector":"postgresql","name":"servicing","ts_ms":179'
     '5438317128,"snapshot":"false","db":"servicing","sequence":"[\\"26599632\\",\\"26638408\\"]","ts_'
     'us":1795438317128767,"ts_ns":1795438317128767000,"schema":"public","table":"loans","txId":75'
     '0,"lsn":26638408,"xmin":null,"origin":null,"origin_lsn":null},"transaction":null,"op":"u","t'
     's_ms":1795438317371,"ts_us":1795438317371372,"ts_ns":1795438317371372246}'),
    ('loans', 0, 5, 1795438328989, 931001, 'LOANS_BIGINT_DPD',
     '{"before":null,"after":{"loan_id":931001,"borrower_id":930001,"product":"mortgage","currency'
     '":"EUR","principal":"AX14QA==","interest_rate":"AYaf","term_months":300,"origination_date":1'
     '9783,"maturity_date":376199,"outstanding_principal":"7Sl5","status":"active","days_past_due"'
     ':45,"servicer_notes":"short note","updated_at":"2024-03-01T09:30:00.000000Z","risk_grade":"B'
     '"},"source":{"version":"3.7.0.Final","connector":"postgresql","name":"servicing","ts_ms":179'
     '5438328739,"snapshot":"last_in_data_collection","db":"servicing","sequence":"[null,\\"2663868'
     '8\\"]","ts_us":1795438328739097,"ts_ns":1795438328739097000,"schema":"public","table":"loans"'
     ',"txId":751,"lsn":26638688,"xmin":null,"origin":null,"origin_lsn":null},"transaction":null,"'
     'op":"r","ts_ms":1795438328886,"ts_us":1795438328886704,"ts_ns":1795438328886704548}'),
    ('borrowers', 0, 0, 1795438305366, 930003, 'BORROWERS_V1',
     '{"before":null,"after":{"borrower_id":930003,"borrower_type":"sme","full_name":"Rossi Costru'
     'zioni Srl","birth_date":null,"annual_income":"WvMQej//","employment_status":"self_employed",'
     '"postcode":"20121","country_code":"IT","created_at":"1969-12-31T23:59:59.999999Z","updated_a'
     't":"2024-01-02T08:00:00.000000Z"},"source":{"version":"3.7.0.Final","connector":"postgresql"'
     ',"name":"servicing","ts_ms":1795438304322,"snapshot":"false","db":"servicing","sequence":"[\\'
     '"26499432\\",\\"26499432\\"]","ts_us":1795438304322336,"ts_ns":1795438304322336000,"schema":"pu'
     'blic","table":"borrowers","txId":739,"lsn":26499432,"xmin":null,"origin":null,"origin_lsn":n'
     'ull},"transaction":null,"op":"c","ts_ms":1795438304484,"ts_us":1795438304484179,"ts_ns":1795'
     '438304484179660}'),
    ('borrowers', 0, 1, 1795438328960, 930003, 'BORROWERS_WIDE_INCOME',
     '{"before":null,"after":{"borrower_id":930003,"borrower_type":"sme","full_name":"Rossi Costru'
     'zioni Srl","birth_date":null,"annual_income":"I4byb8D/nA==","employment_status":"self_employ'
     'ed","postcode":"20121","country_code":"IT","created_at":"1969-12-31T23:59:59.999999Z","updat'
     'ed_at":"2024-01-02T08:00:00.000000Z"},"source":{"version":"3.7.0.Final","connector":"postgre'
     'sql","name":"servicing","ts_ms":1795438328739,"snapshot":"true","db":"servicing","sequence":'
     '"[null,\\"26638688\\"]","ts_us":1795438328739097,"ts_ns":1795438328739097000,"schema":"public"'
     ',"table":"borrowers","txId":751,"lsn":26638688,"xmin":null,"origin":null,"origin_lsn":null},'
     '"transaction":null,"op":"r","ts_ms":1795438328875,"ts_us":1795438328875453,"ts_ns":179543832'
     '8875453166}'),
    ('borrowers', 1, 0, 1795438304654, 930001, 'BORROWERS_V1',
     '{"before":null,"after":{"borrower_id":930001,"borrower_type":"individual","full_name":"Zoë M'
     'üller-Ŝ \\uD83D\\uDE00 \\"quoted\\" \\\\ back","birth_date":-25567,"annual_income":"CwbgQA==","emp'
     'loyment_status":"employed","postcode":"20121","country_code":"IT","created_at":"2024-01-02T0'
     '8:00:00.123456Z","updated_at":"2024-01-02T08:00:00.000001Z"},"source":{"version":"3.7.0.Fina'
     'l","connector":"postgresql","name":"servicing","ts_ms":1795438304305,"snapshot":"false","db"'
     ':"servicing","sequence":"[null,\\"26491352\\"]","ts_us":1795438304305002,"ts_ns":1795438304305'
     '002000,"schema":"public","table":"borrowers","txId":730,"lsn":26491352,"xmin":null,"origin":'
     'null,"origin_lsn":null},"transaction":null,"op":"c","ts_ms":1795438304435,"ts_us":1795438304'
     '435642,"ts_ns":1795438304435642762}'),
    ('borrowers', 1, 1, 1795438304695, 930002, 'BORROWERS_V1',
     '{"before":null,"after":{"borrower_id":930002,"borrower_type":"sme","full_name":"Rossi Costru'
     'zioni Srl","birth_date":null,"annual_income":"WvMQej//","employment_status":"self_employed",'
     '"postcode":"20121","country_code":"IT","created_at":"1969-12-31T23:59:59.999999Z","updated_a'
     't":"2024-01-02T08:00:00.000000Z"},"source":{"version":"3.7.0.Final","connector":"postgresql"'
     ',"name":"servicing","ts_ms":1795438304306,"snapshot":"false","db":"servicing","sequence":"[\\'
     '"26491720\\",\\"26491720\\"]","ts_us":1795438304306685,"ts_ns":1795438304306685000,"schema":"pu'
     'blic","table":"borrowers","txId":731,"lsn":26491720,"xmin":null,"origin":null,"origin_lsn":n'
     'ull},"transaction":null,"op":"c","ts_ms":1795438304442,"ts_us":1795438304442485,"ts_ns":1795'
     '438304442485169}'),
    ('borrowers', 1, 2, 1795438305359, 930002, 'BORROWERS_V1',
     '{"before":{"borrower_id":930002,"borrower_type":"","full_name":"","birth_date":null,"annual_'
     'income":"AA==","employment_status":"","postcode":"","country_code":"","created_at":"1970-01-'
     '01T00:00:00Z","updated_at":"1970-01-01T00:00:00Z"},"after":null,"source":{"version":"3.7.0.F'
     'inal","connector":"postgresql","name":"servicing","ts_ms":1795438304322,"snapshot":"false","'
     'db":"servicing","sequence":"[\\"26499432\\",\\"26499432\\"]","ts_us":1795438304322336,"ts_ns":17'
     '95438304322336000,"schema":"public","table":"borrowers","txId":739,"lsn":26499432,"xmin":nul'
     'l,"origin":null,"origin_lsn":null},"transaction":null,"op":"d","ts_ms":1795438304483,"ts_us"'
     ':1795438304483916,"ts_ns":1795438304483916529}'),
    ('borrowers', 1, 3, 1795438305365, 930002, None, None),
    ('borrowers', 1, 4, 1795438317271, 930004, 'BORROWERS_WIDE_INCOME',
     '{"before":null,"after":{"borrower_id":930004,"borrower_type":"individual","full_name":"Wide '
     'Income","birth_date":null,"annual_income":"MDk=","employment_status":"employed","postcode":"'
     '1000","country_code":"BE","created_at":"2024-01-02T08:00:00.000000Z","updated_at":"2024-01-0'
     '2T08:00:00.000000Z"},"source":{"version":"3.7.0.Final","connector":"postgresql","name":"serv'
     'icing","ts_ms":1795438317121,"snapshot":"false","db":"servicing","sequence":"[\\"26568568\\",\\'
     '"26599360\\"]","ts_us":1795438317121004,"ts_ns":1795438317121004000,"schema":"public","table"'
     ':"borrowers","txId":748,"lsn":26599360,"xmin":null,"origin":null,"origin_lsn":null},"transac'
     'tion":null,"op":"c","ts_ms":1795438317253,"ts_us":1795438317253596,"ts_ns":17954383172535968'
     '78}'),
    ('borrowers', 1, 5, 1795438328953, 930001, 'BORROWERS_WIDE_INCOME',
     '{"before":null,"after":{"borrower_id":930001,"borrower_type":"individual","full_name":"Zoë M'
     'üller-Ŝ \\uD83D\\uDE00 \\"quoted\\" \\\\ back","birth_date":-25567,"annual_income":"BE6vmQA=","emp'
     'loyment_status":"employed","postcode":"20121","country_code":"IT","created_at":"2024-01-02T0'
     '8:00:00.123456Z","updated_at":"2024-01-02T08:00:00.000001Z"},"source":{"version":"3.7.0.Fina'
     'l","connector":"postgresql","name":"servicing","ts_ms":1795438328739,"snapshot":"first","db"'
     ':"servicing","sequence":"[null,\\"26638688\\"]","ts_us":1795438328739097,"ts_ns":1795438328739'
     '097000,"schema":"public","table":"borrowers","txId":751,"lsn":26638688,"xmin":null,"origin":'
     'null,"origin_lsn":null},"transaction":null,"op":"r","ts_ms":1795438328870,"ts_us":1795438328'
     '870379,"ts_ns":1795438328870379690}'),
    ('borrowers', 1, 6, 1795438328961, 930004, 'BORROWERS_WIDE_INCOME',
     '{"before":null,"after":{"borrower_id":930004,"borrower_type":"individual","full_name":"Wide '
     'Income","birth_date":null,"annual_income":"MDk=","employment_status":"employed","postcode":"'
     '1000","country_code":"BE","created_at":"2024-01-02T08:00:00.000000Z","updated_at":"2024-01-0'
     '2T08:00:00.000000Z"},"source":{"version":"3.7.0.Final","connector":"postgresql","name":"serv'
     'icing","ts_ms":1795438328739,"snapshot":"last_in_data_collection","db":"servicing","sequence'
     '":"[null,\\"26638688\\"]","ts_us":1795438328739097,"ts_ns":1795438328739097000,"schema":"publi'
     'c","table":"borrowers","txId":751,"lsn":26638688,"xmin":null,"origin":null,"origin_lsn":null'
     '},"transaction":null,"op":"r","ts_ms":1795438328876,"ts_us":1795438328876327,"ts_ns":1795438'
     '328876327046}'),
    ('payments', 0, 0, 1795438305354, 933001, 'PAYMENTS_V1',
     '{"before":null,"after":{"payment_id":933001,"loan_id":931001,"due_date":19814,"amount_due":"'
     'AeJA","paid_date":null,"amount_paid":"AA==","status":"scheduled","updated_at":"2024-03-01T09'
     ':30:00.000000Z"},"source":{"version":"3.7.0.Final","connector":"postgresql","name":"servicin'
     'g","ts_ms":1795438304320,"snapshot":"false","db":"servicing","sequence":"[\\"26498664\\",\\"264'
     '98664\\"]","ts_us":1795438304320294,"ts_ns":1795438304320294000,"schema":"public","table":"pa'
     'yments","txId":736,"lsn":26498664,"xmin":null,"origin":null,"origin_lsn":null},"transaction"'
     ':null,"op":"c","ts_ms":1795438304474,"ts_us":1795438304474559,"ts_ns":1795438304474559049}'),
    ('payments', 0, 1, 1795438305358, 933001, 'PAYMENTS_V1',
     '{"before":null,"after":{"payment_id":933001,"loan_id":931001,"due_date":19814,"amount_due":"'
     'AeJA","paid_date":19815,"amount_paid":"AeJA","status":"paid","updated_at":"2024-03-01T09:30:'
     '00.000000Z"},"source":{"version":"3.7.0.Final","connector":"postgresql","name":"servicing","'
     'ts_ms":1795438304321,"snapshot":"false","db":"servicing","sequence":"[\\"26499136\\",\\"2649913'
     '6\\"]","ts_us":1795438304321035,"ts_ns":1795438304321035000,"schema":"public","table":"paymen'
     'ts","txId":737,"lsn":26499136,"xmin":null,"origin":null,"origin_lsn":null},"transaction":nul'
     'l,"op":"u","ts_ms":1795438304480,"ts_us":1795438304480565,"ts_ns":1795438304480565877}'),
    ('payments', 0, 2, 1795438305358, 933001, 'PAYMENTS_V1',
     '{"before":{"payment_id":933001,"loan_id":0,"due_date":0,"amount_due":"AA==","paid_date":null'
     ',"amount_paid":"AA==","status":"","updated_at":"1970-01-01T00:00:00Z"},"after":null,"source"'
     ':{"version":"3.7.0.Final","connector":"postgresql","name":"servicing","ts_ms":1795438304321,'
     '"snapshot":"false","db":"servicing","sequence":"[\\"26499312\\",\\"26499312\\"]","ts_us":1795438'
     '304321654,"ts_ns":1795438304321654000,"schema":"public","table":"payments","txId":738,"lsn":'
     '26499312,"xmin":null,"origin":null,"origin_lsn":null},"transaction":null,"op":"d","ts_ms":17'
     '95438304482,"ts_us":1795438304482146,"ts_ns":1795438304482146235}'),
    ('payments', 0, 3, 1795438305359, 933001, None, None),
    ('payments', 0, 4, 1795438317270, 933002, 'PAYMENTS_AMOUNT_DUE_12_1',
     '{"before":null,"after":{"payment_id":933002,"loan_id":931001,"due_date":19844,"amount_due":"'
     'MDk=","paid_date":null,"amount_paid":"AA==","status":"scheduled","updated_at":"2024-03-01T09'
     ':30:00.000000Z"},"source":{"version":"3.7.0.Final","connector":"postgresql","name":"servicin'
     'g","ts_ms":1795438317113,"snapshot":"false","db":"servicing","sequence":"[\\"26538296\\",\\"265'
     '68096\\"]","ts_us":1795438317113243,"ts_ns":1795438317113243000,"schema":"public","table":"pa'
     'yments","txId":746,"lsn":26568096,"xmin":null,"origin":null,"origin_lsn":null},"transaction"'
     ':null,"op":"c","ts_ms":1795438317247,"ts_us":1795438317247224,"ts_ns":1795438317247224288}'),
    ('payments', 0, 5, 1795438329053, 933002, 'PAYMENTS_AMOUNT_DUE_12_1',
     '{"before":null,"after":{"payment_id":933002,"loan_id":931001,"due_date":19844,"amount_due":"'
     'MDk=","paid_date":null,"amount_paid":"AA==","status":"scheduled","updated_at":"2024-03-01T09'
     ':30:00.000000Z"},"source":{"version":"3.7.0.Final","connector":"postgresql","name":"servicin'
     'g","ts_ms":1795438328739,"snapshot":"last","db":"servicing","sequence":"[null,\\"26638688\\"]"'
     ',"ts_us":1795438328739097,"ts_ns":1795438328739097000,"schema":"public","table":"payments","'
     'txId":751,"lsn":26638688,"xmin":null,"origin":null,"origin_lsn":null},"transaction":null,"op'
     '":"r","ts_ms":1795438328903,"ts_us":1795438328903999,"ts_ns":1795438328903999687}'),
    ('collaterals', 0, 0, 1795438305366, None, 'COLLATERALS_V1',
     '{"before":null,"after":null,"source":{"version":"3.7.0.Final","connector":"postgresql","name'
     '":"servicing","ts_ms":1795438304332,"snapshot":"false","db":"servicing","sequence":"[\\"26499'
     '728\\",\\"26503576\\"]","ts_us":1795438304332027,"ts_ns":1795438304332027000,"schema":"public",'
     '"table":"collaterals","txId":740,"lsn":26503576,"xmin":null,"origin":null,"origin_lsn":null}'
     ',"transaction":null,"op":"t","ts_ms":1795438304496,"ts_us":1795438304496981,"ts_ns":17954383'
     '04496981385}'),
    ('collaterals', 0, 1, 1795438317269, 932002, 'COLLATERALS_INT_LOAN_ID',
     '{"before":null,"after":{"collateral_id":932002,"loan_id":931001,"collateral_type":"vehicle",'
     '"appraised_value":"FuOS","appraisal_date":0,"postcode":"10115","country_code":"DE","updated_'
     'at":"2024-02-15T12:00:00.500000Z"},"source":{"version":"3.7.0.Final","connector":"postgresql'
     '","name":"servicing","ts_ms":1795438317102,"snapshot":"false","db":"servicing","sequence":"['
     '\\"26505240\\",\\"26537816\\"]","ts_us":1795438317102103,"ts_ns":1795438317102103000,"schema":"p'
     'ublic","table":"collaterals","txId":744,"lsn":26537816,"xmin":null,"origin":null,"origin_lsn'
     '":null},"transaction":null,"op":"c","ts_ms":1795438317229,"ts_us":1795438317229830,"ts_ns":1'
     '795438317229830880}'),
    ('collaterals', 0, 2, 1795438329024, 932002, 'COLLATERALS_INT_LOAN_ID',
     '{"before":null,"after":{"collateral_id":932002,"loan_id":931001,"collateral_type":"vehicle",'
     '"appraised_value":"FuOS","appraisal_date":0,"postcode":"10115","country_code":"DE","updated_'
     'at":"2024-02-15T12:00:00.500000Z"},"source":{"version":"3.7.0.Final","connector":"postgresql'
     '","name":"servicing","ts_ms":1795438328739,"snapshot":"last_in_data_collection","db":"servic'
     'ing","sequence":"[null,\\"26638688\\"]","ts_us":1795438328739097,"ts_ns":1795438328739097000,"'
     'schema":"public","table":"collaterals","txId":751,"lsn":26638688,"xmin":null,"origin":null,"'
     'origin_lsn":null},"transaction":null,"op":"r","ts_ms":1795438328894,"ts_us":1795438328894285'
     ',"ts_ns":1795438328894285282}'),
    ('collaterals', 1, 0, 1795438305116, 932001, 'COLLATERALS_V1',
     '{"before":null,"after":{"collateral_id":932001,"loan_id":931001,"collateral_type":"residenti'
     'al","appraised_value":"AcnDgA==","appraisal_date":19768,"postcode":"20121","country_code":"I'
     'T","updated_at":"2024-02-15T12:00:00.000000Z"},"source":{"version":"3.7.0.Final","connector"'
     ':"postgresql","name":"servicing","ts_ms":1795438304319,"snapshot":"false","db":"servicing","'
     'sequence":"[\\"26498176\\",\\"26498176\\"]","ts_us":1795438304319643,"ts_ns":1795438304319643000'
     ',"schema":"public","table":"collaterals","txId":735,"lsn":26498176,"xmin":null,"origin":null'
     ',"origin_lsn":null},"transaction":null,"op":"c","ts_ms":1795438304468,"ts_us":17954383044683'
     '04,"ts_ns":1795438304468304861}'),]


def records(table: str) -> list[KafkaRecord]:
    return [
        KafkaRecord(f"servicing.public.{t}", partition, offset, real_key(t, key),
                    None if payload is None else real_value(t, COLUMNS[columns], payload), timestamp)
        for t, partition, offset, timestamp, key, columns, payload in CAPTURE if t == table
    ]


def decoded(table: str, **kwargs):
    return decode_batch(records(table), TABLES_BY_NAME[table], ingested_at=INGESTED_AT, **kwargs)


def by_offset(batch) -> dict[tuple[int, int], dict]:
    return {(r["partition"], r["offset"]): r for r in batch.rows.to_pylist()}


def dead_by_offset(batch) -> dict[tuple[int, int], str]:
    return {(r["partition"], r["offset"]): r["error"] for r in batch.dead_letters.to_pylist()}


# --- the tests ---------------------------------------------------------------------------------------------

def test_loans_create_toast_update_and_an_added_column():
    batch = decoded("loans")
    rows, dead = by_offset(batch), dead_by_offset(batch)
    assert len(rows) + len(dead) == 6
    assert batch.new_columns == {"risk_grade": pa.string()}
    assert batch.rows.schema == raw_arrow_schema(TABLES_BY_NAME["loans"], {"risk_grade": pa.string()})

    created = rows[0, 0]
    assert (created["op"], created["key"], created["before"], created["snapshot"]) == (
        "c", '{"loan_id":931001}', None, "false")
    after = created["after"]
    assert after["servicer_notes"] == LONG_NOTES
    assert (after["principal"], after["interest_rate"]) == (Decimal("250000.00"), Decimal("0.03125"))
    assert (after["origination_date"], after["maturity_date"]) == (date(2024, 3, 1), date(2999, 12, 31))
    assert after["updated_at"] == datetime(2024, 3, 1, 9, 30, tzinfo=UTC)
    assert after["risk_grade"] is None  # the column did not exist yet
    assert created["source_table"] == "loans" and created["source_lsn"] == 26496928
    assert created["source_tx_id"] == 732
    assert created["source_ts"] == datetime(2026, 11, 23, 12, 51, 44, 313430, tzinfo=UTC)
    assert created["kafka_timestamp"] == datetime(2026, 11, 23, 12, 51, 44, 949000, tzinfo=UTC)
    assert created["ingested_at"] == INGESTED_AT

    untouched = rows[0, 1]  # UPDATE ... SET outstanding_principal = -12345.67, days_past_due = 31
    assert untouched["unchanged_toast"] == ["servicer_notes"]
    assert untouched["after"]["servicer_notes"] is None  # the placeholder is a marker, never a value
    assert untouched["after"]["outstanding_principal"] == Decimal("-12345.67")
    rewritten = rows[0, 2]
    assert rewritten["unchanged_toast"] == [] and rewritten["after"]["servicer_notes"] == "short note"
    assert rewritten["after"]["interest_rate"] == Decimal("0.99999")
    assert rows[0, 3]["after"]["risk_grade"] == "B"

    # After ALTER COLUMN days_past_due TYPE bigint, the update and the snapshot read cannot land in int32.
    assert dead.keys() == {(0, 4), (0, 5)}
    assert all("incompatible type change: loans.days_past_due is int64" in e and "int32" in e
               for e in dead.values())


def test_borrowers_unicode_far_dates_delete_and_primary_key_change():
    batch = decoded("borrowers")
    rows, dead = by_offset(batch), dead_by_offset(batch)
    assert len(rows) + len(dead) == 9

    zoe = rows[1, 0]["after"]
    assert zoe["full_name"] == 'Zoë Müller-Ŝ 😀 "quoted" \\ back'
    assert zoe["birth_date"] == date(1900, 1, 1)
    assert zoe["created_at"] == datetime(2024, 1, 2, 8, 0, 0, 123456, tzinfo=UTC)
    assert zoe["updated_at"] == datetime(2024, 1, 2, 10, 0, 0, 1, tzinfo=timezone(timedelta(hours=2)))
    rossi = rows[1, 1]["after"]
    assert rossi["birth_date"] is None and rossi["annual_income"] == Decimal("999999999999.99")
    assert rossi["created_at"] == datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)

    # UPDATE borrowers SET borrower_id = 930003 WHERE borrower_id = 930002: delete, tombstone, create.
    delete, tombstone, create = rows[1, 2], rows[1, 3], rows[0, 0]
    assert (delete["op"], delete["key"], delete["after"]) == ("d", '{"borrower_id":930002}', None)
    assert delete["before"]["borrower_id"] == 930002
    assert delete["before"]["full_name"] == "" and delete["before"]["annual_income"] == Decimal("0.00")
    assert delete["unchanged_toast"] == []
    assert (tombstone["op"], tombstone["key"], tombstone["before"], tombstone["after"]) == (
        "tombstone", '{"borrower_id":930002}', None, None)
    assert tombstone["source_lsn"] is None and tombstone["source_table"] is None
    assert (create["op"], create["key"], create["after"]["full_name"]) == (
        "c", '{"borrower_id":930003}', "Rossi Costruzioni Srl")

    # numeric(14,2) -> numeric(20,4) has more integer digits than the raw column: the insert after the ALTER
    # and the snapshot reads are dead-lettered, not truncated.
    assert dead.keys() == {(0, 1), (1, 4), (1, 5), (1, 6)}
    assert all("borrowers.annual_income" in e and "precision 20" in e and "decimal128(14, 2)" in e
               for e in dead.values())


def test_payments_update_delete_and_a_lossless_scale_change():
    batch = decoded("payments")
    rows = by_offset(batch)
    assert batch.dead_letters.num_rows == 0 and len(rows) == 6
    assert [rows[0, o]["op"] for o in range(6)] == ["c", "u", "d", "tombstone", "c", "r"]
    assert rows[0, 1]["after"]["paid_date"] == date(2024, 4, 2)
    assert rows[0, 2]["before"]["payment_id"] == 933001 and rows[0, 2]["before"]["paid_date"] is None
    # numeric(12,1) widens into numeric(14,2) losslessly.
    assert rows[0, 4]["after"]["amount_due"] == Decimal("1234.50")
    snapshot = rows[0, 5]
    assert (snapshot["op"], snapshot["snapshot"]) == ("r", "last")
    assert snapshot["after"] == rows[0, 4]["after"]


def test_collaterals_truncate_and_a_narrower_integer():
    batch = decoded("collaterals")
    rows = by_offset(batch)
    assert batch.dead_letters.num_rows == 0 and len(rows) == 4
    truncate = rows[0, 0]
    assert (truncate["op"], truncate["key"], truncate["before"], truncate["after"]) == ("t", None, None, None)
    assert truncate["source_table"] == "collaterals" and truncate["source_lsn"] is not None
    # loan_id became integer at the source: int32 widens into the registry's int64.
    assert rows[0, 1]["after"]["loan_id"] == 931001
    assert rows[0, 1]["after"]["updated_at"] == datetime(2024, 2, 15, 12, 0, 0, 500000, tzinfo=UTC)
    assert (rows[0, 2]["op"], rows[0, 2]["snapshot"]) == ("r", "last_in_data_collection")
    assert rows[1, 0]["after"]["appraised_value"] == Decimal("300000.00")


def test_rows_keep_input_order_and_counts_add_up_for_every_topic():
    for table in PRIMARY_KEYS:
        consumed = records(table)
        batch = decoded(table)
        landed = list(zip(batch.rows["partition"].to_pylist(), batch.rows["offset"].to_pylist(), strict=True))
        dead = list(zip(batch.dead_letters["partition"].to_pylist(), batch.dead_letters["offset"].to_pylist(),
                        strict=True))
        assert batch.rows.num_rows + batch.dead_letters.num_rows == len(consumed)
        positions = {(r.partition, r.offset): i for i, r in enumerate(consumed)}
        assert [positions[p] for p in landed] == sorted(positions[p] for p in landed)
        assert sorted(landed + dead) == sorted(positions)


def test_known_evolved_columns_are_kept_on_batches_without_them():
    v1_only = [r for r in records("loans") if r.offset < 3]
    batch = decode_batch(v1_only, TABLES_BY_NAME["loans"], ingested_at=INGESTED_AT,
                         evolved_columns={"risk_grade": pa.string()})
    assert batch.new_columns == {"risk_grade": pa.string()}
    assert batch.rows["after"].combine_chunks().field("risk_grade").null_count == 3


def test_a_later_registry_change_lets_the_widened_loans_land():
    # Once the registry says bigint, the messages after ALTER ... TYPE bigint land; older int32 ones widen.
    from dataclasses import replace

    from cardo_pipeline.tables import Column

    loans = TABLES_BY_NAME["loans"]
    widened = replace(loans, columns=tuple(Column(c.name, "bigint") if c.name == "days_past_due" else c
                                           for c in loans.columns))
    batch = decode_batch(records("loans"), widened, ingested_at=INGESTED_AT)
    assert batch.dead_letters.num_rows == 0
    assert batch.rows["after"].combine_chunks().field("days_past_due").to_pylist() == [0, 31, 31, 31, 45, 45]


@pytest.mark.parametrize("table", sorted(PRIMARY_KEYS))
def test_one_message_at_a_time_decodes_like_the_batch(table):
    batch = decoded(table)
    singles = [decode_batch([r], TABLES_BY_NAME[table], ingested_at=INGESTED_AT) for r in records(table)]
    rows = [row for single in singles for row in single.rows.to_pylist()]
    for row in rows:
        row["after"] = row["after"] and {k: v for k, v in row["after"].items() if k != "risk_grade"}
    expected = batch.rows.to_pylist()
    for row in expected:
        row["after"] = row["after"] and {k: v for k, v in row["after"].items() if k != "risk_grade"}
    assert rows == expected
    assert [e for s in singles for e in s.dead_letters["error"].to_pylist()] == batch.dead_letters[
        "error"].to_pylist()


def test_the_capture_is_the_json_debezium_wrote():
    for table in PRIMARY_KEYS:
        for record in records(table):
            if record.value is not None:
                assert json.loads(record.value)["payload"]["source"]["version"] == "3.7.0.Final"
