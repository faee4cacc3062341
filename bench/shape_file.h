// Reader of the shape sweeps in bench/shapes/*.csv, shared by anvil-bench and the tests.
// A file is a header row of column names, then one shape per row; '#' lines are comments.
#pragma once

#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace anvil::shapes {

using Row = std::map<std::string, std::string>;  // column -> value

// Rows of `path` whose "tags" column is one of `tags` (all rows when `tags` is empty).
// An unreadable file gives no rows.
inline std::vector<Row> load(const std::string& path, const std::vector<std::string>& tags) {
  std::ifstream in(path);
  std::vector<std::string> header;
  std::vector<Row> rows;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::vector<std::string> cells;
    std::stringstream ss(line);
    std::string cell;
    while (std::getline(ss, cell, ',')) cells.push_back(cell);
    if (header.empty()) {
      header = cells;
      continue;
    }
    Row row;
    for (size_t i = 0; i < header.size() && i < cells.size(); ++i) row[header[i]] = cells[i];
    bool wanted = tags.empty();
    for (const std::string& tag : tags) wanted = wanted || row["tags"] == tag;
    if (wanted) rows.push_back(std::move(row));
  }
  return rows;
}

}  // namespace anvil::shapes
