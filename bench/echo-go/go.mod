module wslb/bench/echo

go 1.21
