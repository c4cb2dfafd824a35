module github.com/wslb/wslb/tools/pause

go 1.26.0
