#pragma once
// Reports: SVG charts drawn by the project itself (no plotting dependency), the Markdown report
// made from report.json, and a small JSON-Schema validator (the subset docs/report.schema.json
// uses) so that tests and `quarot-batch --resume` can check a report.
#include <string>
#include <vector>

namespace quarot {

struct ChartSeries {
  std::string name;
  std::vector<double> x, y;
  std::vector<std::string> labels;  // optional, one per point (drawn next to it)
  bool dashed = false;
};

struct ChartOptions {
  std::string title, x_label, y_label;
  bool log_y = false;
  bool lines = true;  // false: points only (scatter)
  int width = 720, height = 420;
};

// A complete, well-formed SVG document: axes with ticks, one polyline/point set per series
// (each series in its own <g class="series" data-name="...">), and a legend.
std::string svg_chart(const std::vector<ChartSeries>& series, const ChartOptions& opts);

// The Markdown report for people, from the text of report.json (summary table first).
std::string report_markdown(const std::string& report_json);

// Validates `document` (JSON text) against `schema` (JSON text): supports type (incl. arrays of
// types), required, properties, additionalProperties (bool), items, enum, const, minimum,
// minItems, and $ref to "#/definitions/...". Returns the violations, empty when valid; each is
// "path: problem".
std::vector<std::string> validate_json_schema(const std::string& schema, const std::string& document);

// Escapes text for XML attribute values and character data.
std::string xml_escape(const std::string& s);

}  // namespace quarot
