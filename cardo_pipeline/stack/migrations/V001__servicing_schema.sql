-- V001: the servicing schema of the source contract (ARCHITECTURE section 3).
-- Debezium reads these tables through the pgoutput plugin; REPLICA IDENTITY stays DEFAULT so that an
-- update leaving servicer_notes untouched arrives with Debezium's unchanged-TOAST placeholder.

CREATE TABLE public.borrowers (
    borrower_id       bigint PRIMARY KEY,
    borrower_type     text NOT NULL CHECK (borrower_type IN ('individual', 'sme')),
    full_name         text NOT NULL,
    birth_date        date NULL,
    annual_income     numeric(14,2) NOT NULL,
    employment_status text NOT NULL,
    postcode          text NOT NULL,
    country_code      char(2) NOT NULL,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL
);

CREATE TABLE public.loans (
    loan_id               bigint PRIMARY KEY,
    borrower_id           bigint NOT NULL,
    product               text NOT NULL CHECK (product IN ('mortgage', 'consumer', 'auto', 'sme')),
    currency              char(3) NOT NULL,
    principal             numeric(14,2) NOT NULL,
    interest_rate         numeric(7,5) NOT NULL,
    term_months           int NOT NULL,
    origination_date      date NOT NULL,
    maturity_date         date NOT NULL,
    outstanding_principal numeric(14,2) NOT NULL,
    status                text NOT NULL CHECK (status IN ('active', 'repaid', 'defaulted', 'written_off')),
    days_past_due         int NOT NULL,
    servicer_notes        text NULL,
    updated_at            timestamptz NOT NULL
);
-- Keep long notes out of line and uncompressed, so every note over ~2 kB is really TOASTed.
ALTER TABLE public.loans ALTER COLUMN servicer_notes SET STORAGE EXTERNAL;
CREATE INDEX loans_borrower_id_idx ON public.loans (borrower_id);

CREATE TABLE public.collaterals (
    collateral_id   bigint PRIMARY KEY,
    loan_id         bigint NOT NULL,
    collateral_type text NOT NULL CHECK (collateral_type IN ('residential', 'commercial', 'vehicle', 'equipment')),
    appraised_value numeric(14,2) NOT NULL,
    appraisal_date  date NOT NULL,
    postcode        text NOT NULL,
    country_code    char(2) NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX collaterals_loan_id_idx ON public.collaterals (loan_id);

CREATE TABLE public.payments (
    payment_id  bigint PRIMARY KEY,
    loan_id     bigint NOT NULL,
    due_date    date NOT NULL,
    amount_due  numeric(14,2) NOT NULL,
    paid_date   date NULL,
    amount_paid numeric(14,2) NOT NULL,
    status      text NOT NULL CHECK (status IN ('scheduled', 'paid', 'late', 'missed')),
    updated_at  timestamptz NOT NULL
);
CREATE INDEX payments_loan_id_idx ON public.payments (loan_id);

-- The simulator's ground truth lives outside the servicing schema, so Debezium never publishes it.
CREATE SCHEMA simulator;
CREATE TABLE simulator.loan_truth (
    loan_id           bigint NOT NULL,
    as_of_date        date NOT NULL,
    pd_12m            double precision NOT NULL,
    PRIMARY KEY (loan_id, as_of_date)
);
