module github.com/opengpa/gpa

go 1.26
