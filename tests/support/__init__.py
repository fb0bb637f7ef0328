"""The one home of what tests and benchmarks share: `helpers` (paths, secrets, configs on files, a
clock, signers, a waiter), `redis` (servers for the tests), `emulators` (Salesforce and Slack on
localhost), `stack` (the connector as real processes), `burst` (bursts and how a run ended), and
`delivery` (the world of tests that run jobs in their own process). Test modules import from here,
never from each other or from conftest."""
