-- wrk script for benchmarks/bench_server.py --wrk: POST one prepared body (file and Content-Type from
-- the environment) on every request. Status codes other than 2xx are counted by wrk as "Non-2xx".
local file = assert(io.open(os.getenv("MMSERVE_WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*all")
file:close()
wrk.headers["Content-Type"] = os.getenv("MMSERVE_WRK_CONTENT_TYPE")
